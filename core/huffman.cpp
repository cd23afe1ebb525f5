#include "core/huffman.h"

#include <algorithm>
#include <queue>
#include <utility>

#include "core/error.h"

namespace sq {

void BitWriter::put(uint32_t value, int nbits) {
  for (int i = nbits - 1; i >= 0; --i) {
    if (bits_ % 8 == 0) bytes_.push_back(0);
    if ((value >> i) & 1u) bytes_.back() |= uint8_t(0x80u >> (bits_ % 8));
    ++bits_;
  }
}

int BitReader::bit() {
  if (pos_ >= nbits_) fail(what_, ": stream ends early (", nbits_, " bits)");
  const int b = (data_[pos_ / 8] >> (7 - pos_ % 8)) & 1;
  ++pos_;
  return b;
}

uint32_t BitReader::get(int nbits) {
  uint32_t v = 0;
  for (int i = 0; i < nbits; ++i) v = (v << 1) | uint32_t(bit());
  return v;
}

namespace {

// Optimal code lengths (unbounded), ties broken by node id so the result is deterministic.
std::vector<int> raw_lengths(const std::vector<uint64_t>& freq) {
  const size_t n = freq.size();
  std::vector<int> parent(2 * n, -1);
  using Item = std::pair<uint64_t, int>;  // (weight, node id)
  std::priority_queue<Item, std::vector<Item>, std::greater<Item>> q;
  for (size_t s = 0; s < n; ++s)
    if (freq[s] > 0) q.push({freq[s], int(s)});
  int next = int(n);
  while (q.size() > 1) {
    const Item a = q.top();
    q.pop();
    const Item b = q.top();
    q.pop();
    parent[size_t(a.second)] = next;
    parent[size_t(b.second)] = next;
    q.push({a.first + b.first, next++});
  }
  std::vector<int> len(n, 0);
  for (size_t s = 0; s < n; ++s) {
    if (freq[s] == 0) continue;
    int d = 0;
    for (int v = int(s); parent[size_t(v)] >= 0; v = parent[size_t(v)]) ++d;
    len[s] = d;
  }
  return len;
}

}  // namespace

std::vector<uint8_t> huffman_lengths(const std::vector<uint64_t>& freq) {
  SQ_ASSERT(freq.size() <= 65536, "Huffman alphabet of ", freq.size(), " symbols");
  std::vector<uint8_t> out(freq.size(), 0);
  const size_t used = size_t(std::count_if(freq.begin(), freq.end(), [](uint64_t f) { return f > 0; }));
  if (used == 0) return out;
  if (used == 1) {
    for (size_t s = 0; s < freq.size(); ++s)
      if (freq[s] > 0) out[s] = 1;
    return out;
  }
  std::vector<uint64_t> f = freq;
  for (;;) {
    const std::vector<int> len = raw_lengths(f);
    if (*std::max_element(len.begin(), len.end()) <= kMaxCodeLength) {
      for (size_t s = 0; s < f.size(); ++s) out[s] = uint8_t(len[s]);
      return out;
    }
    for (uint64_t& x : f)  // flatten the distribution and try again (as bzip2 does)
      if (x > 0) x = (x >> 1) | 1;
  }
}

namespace {

// Canonical codes: counts per length, then codes in (length, symbol) order.
void canonical(const std::vector<uint8_t>& len, std::vector<uint32_t>* code) {
  int count[kMaxCodeLength + 1] = {};
  for (uint8_t l : len) ++count[l];
  count[0] = 0;
  uint32_t next[kMaxCodeLength + 2] = {};
  uint32_t c = 0;
  for (int l = 1; l <= kMaxCodeLength; ++l) {
    c = (c + uint32_t(count[l - 1])) << 1;
    next[l] = c;
  }
  code->assign(len.size(), 0);
  for (size_t s = 0; s < len.size(); ++s)
    if (len[s]) (*code)[s] = next[len[s]]++;
}

}  // namespace

HuffmanEncoder::HuffmanEncoder(const std::vector<uint8_t>& lengths) : len_(lengths) {
  for (uint8_t l : len_) SQ_ASSERT(l <= kMaxCodeLength, "code length ", int(l));
  canonical(len_, &code_);
}

void HuffmanEncoder::put(BitWriter& w, int symbol) const {
  SQ_ASSERT(symbol >= 0 && size_t(symbol) < len_.size() && len_[size_t(symbol)] > 0,
            "symbol ", symbol, " has no Huffman code");
  w.put(code_[size_t(symbol)], len_[size_t(symbol)]);
}

HuffmanDecoder::HuffmanDecoder(const std::vector<uint8_t>& lengths, const std::string& what) {
  for (uint8_t l : lengths)
    if (l > kMaxCodeLength) fail(what, ": Huffman code length ", int(l), " exceeds ", kMaxCodeLength);
  for (uint8_t l : lengths) ++count_[l];
  count_[0] = 0;
  // Kraft: the lengths must not oversubscribe the code space (an incomplete code is allowed:
  // its unused codes are refused when read). A lone symbol has length 1.
  int64_t left = 1;
  int used = 0;
  for (int l = 1; l <= kMaxCodeLength; ++l) {
    left = 2 * left - count_[l];
    used += count_[l];
    if (left < 0) fail(what, ": Huffman code lengths are oversubscribed");
  }
  if (used == 0) fail(what, ": Huffman table has no symbols");
  int idx = 0;
  for (int l = 1; l <= kMaxCodeLength; ++l) {
    first_index_[l] = idx;
    idx += count_[l];
  }
  symbols_.resize(size_t(used));
  int fill[kMaxCodeLength + 1];
  std::copy(first_index_, first_index_ + kMaxCodeLength + 1, fill);
  for (size_t s = 0; s < lengths.size(); ++s)
    if (lengths[s]) symbols_[size_t(fill[lengths[s]]++)] = int(s);
}

int HuffmanDecoder::get(BitReader& r) const {
  uint32_t code = 0, first = 0;  // first: the first code of the current length
  for (int l = 1; l <= kMaxCodeLength; ++l) {
    code = (code << 1) | uint32_t(r.bit());
    if (code - first < uint32_t(count_[l])) return symbols_[size_t(first_index_[l]) + (code - first)];
    first = (first + uint32_t(count_[l])) << 1;
  }
  fail(r.what(), ": invalid Huffman code at bit ", r.position());
}

}  // namespace sq
