// Canonical Huffman coding over small alphabets (at most 65,536 symbols), with code lengths
// limited to kMaxCodeLength bits, and the MSB-first bit streams it writes and reads. Used by the
// compressed model format (core/compress.h) for the weight codes and the index gaps; zlib's
// deflate has Huffman inside but no interface for a custom alphabet, hence this small module.
//
// A code is described by its lengths alone (0: the symbol does not occur): codes are assigned in
// (length, symbol) order, as in DEFLATE. The decoder validates the lengths (no oversubscribed
// prefix tree, at least one symbol) and every read against the end of its stream.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace sq {

constexpr int kMaxCodeLength = 15;  // stored in 4 bits

class BitWriter {
 public:
  void put(uint32_t value, int nbits);  // the low nbits of value, most significant first
  uint64_t bits() const { return bits_; }
  const std::vector<uint8_t>& bytes() const { return bytes_; }  // the last byte zero-padded

 private:
  std::vector<uint8_t> bytes_;
  uint64_t bits_ = 0;
};

class BitReader {
 public:
  // what: names the stream in errors ("<what>: stream ends early").
  BitReader(const uint8_t* data, uint64_t nbits, std::string what)
      : data_(data), nbits_(nbits), what_(std::move(what)) {}
  uint32_t get(int nbits);  // throws sq::Error past the end
  int bit();
  uint64_t position() const { return pos_; }
  uint64_t size() const { return nbits_; }
  const std::string& what() const { return what_; }

 private:
  const uint8_t* data_;
  uint64_t nbits_, pos_ = 0;
  std::string what_;
};

// Code lengths for these symbol frequencies: optimal Huffman lengths, flattened until none
// exceeds kMaxCodeLength; a single occurring symbol gets length 1; no occurring symbol: all 0.
std::vector<uint8_t> huffman_lengths(const std::vector<uint64_t>& freq);

class HuffmanEncoder {
 public:
  explicit HuffmanEncoder(const std::vector<uint8_t>& lengths);
  void put(BitWriter& w, int symbol) const;  // the symbol must have a code
  int length(int symbol) const { return len_[size_t(symbol)]; }

 private:
  std::vector<uint8_t> len_;
  std::vector<uint32_t> code_;
};

class HuffmanDecoder {
 public:
  // Throws sq::Error ("<what>: ...") if the lengths describe no valid prefix code.
  HuffmanDecoder(const std::vector<uint8_t>& lengths, const std::string& what);
  int get(BitReader& r) const;  // throws on a code that is not in the table or past the end

 private:
  int count_[kMaxCodeLength + 1] = {};
  int first_index_[kMaxCodeLength + 1] = {};
  std::vector<int> symbols_;  // in (length, symbol) order
};

}  // namespace sq
