#include "core/compress.h"

#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <numeric>
#include <sstream>

#include "core/error.h"
#include "core/huffman.h"
#include "core/safetensors.h"

namespace sq {

// ---- the compressible tensors and the pruning schedule ---------------------------------------

std::vector<WeightTensor> weight_tensors(const Model& plan) {
  std::vector<WeightTensor> out;
  auto add = [&](const std::string& name, size_t offset) {
    for (const ParamSpec& p : plan.layout().tensors)
      if (p.offset == offset) {
        out.push_back({name, offset, p.count});
        return;
      }
    fail("no parameter tensor at offset ", offset, " for ", name);
  };
  for (const Layer& l : plan.layers()) {
    if (l.kind == LayerKind::kConv) add(l.name, l.w);
    if (l.kind != LayerKind::kFire) continue;
    add(l.name + ".squeeze", l.ws);
    if (l.fire.E1 > 0) add(l.name + ".expand1x1", l.w1);
    if (l.fire.E3 > 0) add(l.name + ".expand3x3", l.w3);
    if (l.bypass == Bypass::kComplex) add(l.name + ".bypass", l.bw);
  }
  std::sort(out.begin(), out.end(),
            [](const WeightTensor& a, const WeightTensor& b) { return a.offset < b.offset; });
  return out;
}

PruneSchedule paper_schedule() {
  PruneSchedule s;
  for (int f = 2; f <= 9; ++f) s["fire" + std::to_string(f) + ".expand3x3"] = f <= 7 ? 0.33 : 0.30;
  s["fire6.expand1x1"] = 0.5;
  s["fire7.squeeze"] = 0.5;
  s["fire8.expand1x1"] = 0.5;
  s["fire9.squeeze"] = 0.5;
  s["conv10"] = 0.2;
  return s;
}

PruneSchedule parse_schedule(const std::string& spec, const Model& plan) {
  std::vector<std::string> names;
  for (const WeightTensor& t : weight_tensors(plan)) names.push_back(t.name);
  auto known = [&](const std::string& n) { return std::find(names.begin(), names.end(), n) != names.end(); };
  PruneSchedule s;
  if (spec == "paper") {
    s = paper_schedule();
    for (const auto& [name, f] : s)
      if (!known(name)) fail("prune schedule 'paper': this model has no tensor ", name);
    return s;
  }
  if (spec == "none" || spec.empty()) return s;
  // A stray comma (leading, doubled or trailing) is a slip in the list, not an empty entry to skip.
  if (spec.front() == ',' || spec.back() == ',' || spec.find(",,") != std::string::npos)
    fail("prune schedule '", spec, "' has an empty entry (a stray comma)");
  std::stringstream in(spec);
  std::string item;
  while (std::getline(in, item, ',')) {
    const size_t eq = item.find('=');
    if (eq == std::string::npos) fail("prune schedule entry '", item, "' is not NAME=FRACTION");
    const std::string name = item.substr(0, eq), value = item.substr(eq + 1);
    if (!known(name)) {
      std::string list;
      for (const std::string& n : names) list += (list.empty() ? "" : ", ") + n;
      fail("prune schedule: unknown tensor '", name, "' (known: ", list, ")");
    }
    double f = 0;
    size_t used = 0;
    try {
      f = std::stod(value, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != value.size() || value.empty() || !(f >= 0.0 && f <= 1.0))
      fail("prune schedule: fraction of ", name, " must be a number in [0, 1], got '", value, "'");
    if (s.count(name)) fail("prune schedule: ", name, " given twice");
    s[name] = f;
  }
  return s;
}

PruneSchedule step_schedule(const PruneSchedule& target, int step, int steps) {
  SQ_ASSERT(steps >= 1 && step >= 1 && step <= steps, "pruning step ", step, " of ", steps);
  PruneSchedule s;
  for (const auto& [name, f] : target)
    s[name] = step == steps ? f : 1.0 - (1.0 - f) * double(step) / double(steps);
  return s;
}

size_t kept_count(size_t count, double fraction) {
  // Rounded up (the paper's 421,098 for squeezenet1.0 is the sum of ceilings); the epsilon keeps
  // an exact product such as 0.5 * 9216 from rounding up through representation error.
  return std::min(count, size_t(std::ceil(fraction * double(count) - 1e-9)));
}

std::vector<uint8_t> magnitude_mask(const Model& plan, const float* params,
                                    const PruneSchedule& schedule) {
  std::vector<uint8_t> mask(plan.layout().total, 1);
  for (const WeightTensor& t : weight_tensors(plan)) {
    auto it = schedule.find(t.name);
    if (it == schedule.end()) continue;
    const size_t keep = kept_count(t.count, it->second);
    std::vector<uint32_t> order(t.count);
    std::iota(order.begin(), order.end(), 0u);
    const float* w = params + t.offset;
    // Largest magnitude first; equal magnitudes: the lower index first.
    std::stable_sort(order.begin(), order.end(),
                     [&](uint32_t a, uint32_t b) { return std::fabs(w[a]) > std::fabs(w[b]); });
    for (size_t i = keep; i < t.count; ++i) mask[t.offset + order[i]] = 0;
  }
  return mask;
}

void apply_mask(float* values, const std::vector<uint8_t>& mask) {
  for (size_t i = 0; i < mask.size(); ++i)
    if (!mask[i]) values[i] = 0.0f;
}

// ---- k-means ------------------------------------------------------------------------------------

KMeans kmeans_1d(const float* values, size_t n, int k, int max_iter) {
  SQ_ASSERT(k >= 1 && k <= 65536, "k-means with k = ", k);
  KMeans r;
  r.codes.assign(n, 0);
  r.centroids.assign(size_t(k), 0.0f);
  if (n == 0) return r;
  const auto [lo_it, hi_it] = std::minmax_element(values, values + n);
  const double lo = *lo_it, hi = *hi_it;
  for (int j = 0; j < k; ++j)  // linear initialisation over [min, max]
    r.centroids[size_t(j)] = float(k == 1 ? (lo + hi) / 2 : lo + (hi - lo) * j / (k - 1));
  std::vector<uint32_t> order(n);  // the values in ascending order, once
  std::iota(order.begin(), order.end(), 0u);
  std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return values[a] < values[b]; });
  std::vector<int> by_value(static_cast<size_t>(k));
  std::vector<double> sum(static_cast<size_t>(k));
  std::vector<size_t> cnt(static_cast<size_t>(k));
  // Assignment: walk the sorted values against the sorted centroids (a value on a midpoint goes
  // to the lower centroid); true if any code changed.
  auto assign = [&](bool first) {
    std::iota(by_value.begin(), by_value.end(), 0);
    std::stable_sort(by_value.begin(), by_value.end(),
                     [&](int a, int b) { return r.centroids[size_t(a)] < r.centroids[size_t(b)]; });
    bool changed = first;
    size_t c = 0;
    for (uint32_t idx : order) {
      const float v = values[idx];
      while (c + 1 < size_t(k)) {
        const float a = r.centroids[size_t(by_value[c])], b = r.centroids[size_t(by_value[c + 1])];
        if (std::fabs(double(v) - b) < std::fabs(double(v) - a)) ++c;
        else break;
      }
      const uint16_t code = uint16_t(by_value[c]);
      if (r.codes[idx] != code) changed = true;
      r.codes[idx] = code;
    }
    return changed;
  };
  // Always ends with an assignment: the codes are nearest to the returned centroids; when no code
  // changed (a fixed point), the centroids are also the means of their values.
  for (int it = 0;; ++it) {
    const bool changed = assign(it == 0);
    r.iterations = it + 1;
    if (!changed || it + 1 >= max_iter) break;
    // Update: each centroid to the mean of its values (an empty cluster keeps its centroid).
    std::fill(sum.begin(), sum.end(), 0.0);
    std::fill(cnt.begin(), cnt.end(), 0);
    for (size_t i = 0; i < n; ++i) sum[r.codes[i]] += values[i], ++cnt[r.codes[i]];
    for (int j = 0; j < k; ++j)
      if (cnt[size_t(j)]) r.centroids[size_t(j)] = float(sum[size_t(j)] / double(cnt[size_t(j)]));
  }
  return r;
}

// ---- quantization ---------------------------------------------------------------------------------

namespace {
// 1 where the flat buffer belongs to a weight tensor, 0 for the exact parameters (biases).
std::vector<uint8_t> weight_flags(size_t total, const std::vector<WeightTensor>& wt) {
  std::vector<uint8_t> f(total, 0);
  for (const WeightTensor& t : wt) std::fill(f.begin() + long(t.offset), f.begin() + long(t.offset + t.count), 1);
  return f;
}
}  // namespace

CompressedModel quantize(const Model& plan, const float* params, const std::vector<uint8_t>& mask,
                         int bits, int index_bits) {
  if (bits < 2 || bits > 8) fail("--bits must be in [2, 8], got ", bits);
  if (index_bits < 1 || index_bits > 12) fail("index bits must be in [1, 12], got ", index_bits);
  SQ_ASSERT(mask.size() == plan.layout().total, "mask of ", mask.size(), " entries");
  CompressedModel cm;
  cm.config = plan.config();
  cm.bits = bits;
  cm.index_bits = index_bits;
  const std::vector<WeightTensor> wt = weight_tensors(plan);
  for (const WeightTensor& t : wt) {
    QuantizedTensor q;
    std::vector<float> kept;
    for (size_t i = 0; i < t.count; ++i)
      if (mask[t.offset + i]) q.positions.push_back(uint32_t(i)), kept.push_back(params[t.offset + i]);
    KMeans km = kmeans_1d(kept.data(), kept.size(), 1 << bits);
    q.codebook = std::move(km.centroids);
    q.codes = std::move(km.codes);
    cm.weights.push_back(std::move(q));
  }
  const std::vector<uint8_t> is_weight = weight_flags(plan.layout().total, wt);
  for (size_t i = 0; i < is_weight.size(); ++i)
    if (!is_weight[i]) cm.exact.push_back(params[i]);
  return cm;
}

std::vector<float> dequantize(const CompressedModel& cm, const Model& plan) {
  const std::vector<WeightTensor> wt = weight_tensors(plan);
  SQ_ASSERT(wt.size() == cm.weights.size(), "compressed model has ", cm.weights.size(),
            " weight tensors, the model ", wt.size());
  std::vector<float> p(plan.layout().total, 0.0f);
  const std::vector<uint8_t> is_weight = weight_flags(p.size(), wt);
  for (size_t t = 0; t < wt.size(); ++t) {
    const QuantizedTensor& q = cm.weights[t];
    for (size_t j = 0; j < q.positions.size(); ++j)
      p[wt[t].offset + q.positions[j]] = q.codebook[q.codes[j]];
  }
  size_t e = 0;
  for (size_t i = 0; i < p.size(); ++i)
    if (!is_weight[i]) {
      SQ_ASSERT(e < cm.exact.size(), "compressed model has too few exact parameters");
      p[i] = cm.exact[e++];
    }
  SQ_ASSERT(e == cm.exact.size(), "compressed model has too many exact parameters");
  return p;
}

namespace {

std::vector<std::vector<float>> centroid_gradients(const CompressedModel& cm,
                                                   const std::vector<WeightTensor>& wt,
                                                   const float* grads) {
  std::vector<std::vector<float>> out;
  for (size_t t = 0; t < wt.size(); ++t) {
    const QuantizedTensor& q = cm.weights[t];
    std::vector<double> g(q.codebook.size(), 0.0);
    for (size_t j = 0; j < q.positions.size(); ++j) g[q.codes[j]] += grads[wt[t].offset + q.positions[j]];
    out.emplace_back(g.begin(), g.end());
  }
  return out;
}

}  // namespace

std::vector<std::vector<float>> centroid_gradients(const CompressedModel& cm, const Model& plan,
                                                   const float* grads) {
  return centroid_gradients(cm, weight_tensors(plan), grads);
}

CentroidLists centroid_lists(const CompressedModel& cm, const Model& plan) {
  const std::vector<WeightTensor> wt = weight_tensors(plan);
  const size_t n = plan.layout().total;
  SQ_ASSERT(wt.size() == cm.weights.size(), "compressed model does not match the model");
  if (n >= size_t(INT32_MAX)) fail("a model of ", n, " parameters is too large for 32-bit member indices");
  CentroidLists L;
  for (size_t t = 0; t < wt.size(); ++t) {
    L.book_offset.push_back(L.codebook.size());
    L.codebook.insert(L.codebook.end(), cm.weights[t].codebook.begin(), cm.weights[t].codebook.end());
  }
  L.start.assign(L.codebook.size() + 1, 0);
  L.centroid_of.assign(n, kNotShared);
  for (size_t t = 0; t < wt.size(); ++t) {
    const QuantizedTensor& q = cm.weights[t];
    std::fill(L.centroid_of.begin() + long(wt[t].offset), L.centroid_of.begin() + long(wt[t].offset + wt[t].count), -1);
    for (size_t j = 0; j < q.positions.size(); ++j) {
      const size_t g = L.book_offset[t] + q.codes[j];
      ++L.start[g + 1];
      L.centroid_of[wt[t].offset + q.positions[j]] = int32_t(g);
    }
  }
  for (size_t g = 0; g < L.codebook.size(); ++g) L.start[g + 1] += L.start[g];
  // Counting sort by centroid; within a centroid the parameters stay in ascending order.
  L.members.resize(size_t(L.start.back()));
  std::vector<int32_t> fill(L.start.begin(), L.start.end() - 1);
  for (size_t i = 0; i < n; ++i)
    if (L.centroid_of[i] >= 0) L.members[size_t(fill[size_t(L.centroid_of[i])]++)] = int32_t(i);
  return L;
}

QuantizedConstraint::QuantizedConstraint(CompressedModel& cm, const Model& plan, double momentum)
    : cm_(cm), wt_(weight_tensors(plan)), plan_(plan), momentum_(momentum) {
  SQ_ASSERT(wt_.size() == cm.weights.size(), "compressed model does not match the model");
  for (const QuantizedTensor& q : cm.weights) velocity_.emplace_back(q.codebook.size(), 0.0);
}

void QuantizedConstraint::after_update(float* params, float* momentum, const float* grads, double lr) {
  const std::vector<std::vector<float>> g = centroid_gradients(cm_, wt_, grads);
  for (size_t t = 0; t < wt_.size(); ++t) {
    QuantizedTensor& q = cm_.weights[t];
    for (size_t k = 0; k < q.codebook.size(); ++k) {
      velocity_[t][k] = momentum_ * velocity_[t][k] + double(g[t][k]);
      q.codebook[k] = float(double(q.codebook[k]) - lr * velocity_[t][k]);
    }
    float* w = params + wt_[t].offset;
    std::fill(w, w + wt_[t].count, 0.0f);
    std::fill(momentum + wt_[t].offset, momentum + wt_[t].offset + wt_[t].count, 0.0f);
    for (size_t j = 0; j < q.positions.size(); ++j) w[q.positions[j]] = q.codebook[q.codes[j]];
  }
}

void QuantizedConstraint::finish(const float* params) {
  if (dev_) finish_device();
  const std::vector<uint8_t> is_weight = weight_flags(plan_.layout().total, wt_);
  cm_.exact.clear();
  for (size_t i = 0; i < is_weight.size(); ++i)
    if (!is_weight[i]) cm_.exact.push_back(params[i]);
}

// ---- the file ---------------------------------------------------------------------------------
// Layout (little-endian; docs/FORMATS.md, "Compressed models"):
//   "SQZDEEPC" u16 version, model config, u8 normalization channels (0 or in_c) with their
//   means and standard deviations as f32, u8 index_bits, u16 tensor count,
//   per weight tensor: u8 bits, u32 kept, u32 entries, 2^bits f32 codebook, code lengths of the
//     2^bits + 1 symbols (the last: filler) as 4-bit nibbles, gap lengths of the 2^index_bits
//     symbols as nibbles, u32 code-stream bits, u32 gap-stream bits, the two streams;
//   u32 exact count, the exact parameters as f32;  u32 CRC-32 of everything before it.

namespace {

constexpr char kMagic[8] = {'S', 'Q', 'Z', 'D', 'E', 'E', 'P', 'C'};
constexpr uint16_t kVersion = 1;
constexpr size_t kMaxParams = size_t(1) << 28;

struct Out {
  std::vector<uint8_t> b;
  template <class T>
  void put(T v) {
    uint8_t raw[sizeof(T)];
    std::memcpy(raw, &v, sizeof(T));  // little-endian hosts only (x86-64, aarch64)
    b.insert(b.end(), raw, raw + sizeof(T));
  }
  void bytes(const uint8_t* p, size_t n) { b.insert(b.end(), p, p + n); }
  void nibbles(const std::vector<uint8_t>& v) {
    for (size_t i = 0; i < v.size(); i += 2)
      b.push_back(uint8_t(v[i] << 4 | (i + 1 < v.size() ? v[i + 1] : 0)));
  }
};

struct In {
  const uint8_t* p;
  size_t n, pos = 0;
  const std::string& what;
  void need(size_t k, const char* field) const {
    if (k > n - pos) fail(what, ": truncated (", field, " needs ", k, " bytes at offset ", pos, ", ", n - pos, " left)");
  }
  template <class T>
  T get(const char* field) {
    need(sizeof(T), field);
    T v;
    std::memcpy(&v, p + pos, sizeof(T));
    pos += sizeof(T);
    return v;
  }
  std::vector<uint8_t> nibbles(size_t count, const char* field) {
    need((count + 1) / 2, field);
    std::vector<uint8_t> v(count);
    for (size_t i = 0; i < count; ++i) v[i] = uint8_t(i % 2 == 0 ? p[pos + i / 2] >> 4 : p[pos + i / 2] & 15);
    pos += (count + 1) / 2;
    return v;
  }
};

uint32_t crc_of(const uint8_t* p, size_t n) {
  uLong c = crc32(0L, Z_NULL, 0);
  while (n > 0) {
    const uInt chunk = uInt(std::min<size_t>(n, 1u << 30));
    c = crc32(c, p, chunk);
    p += chunk;
    n -= chunk;
  }
  return uint32_t(c);
}

void put_config(Out& o, const ModelConfig& c) {
  o.put(uint8_t(c.arch));
  o.put(uint8_t(c.stem));
  o.put(uint8_t(c.bypass));
  o.put(uint32_t(c.num_classes));
  o.put(uint16_t(c.in_c));
  o.put(uint16_t(c.in_h));
  o.put(uint16_t(c.in_w));
  o.put(uint32_t(c.base_e));
  o.put(uint32_t(c.incr_e));
  o.put(uint16_t(c.freq));
  o.put(c.pct_3x3);
  o.put(c.sr);
  o.put(c.dropout);
}

ModelConfig get_config(In& in) {
  ModelConfig c;
  const uint8_t arch = in.get<uint8_t>("arch"), stem = in.get<uint8_t>("stem"),
                bypass = in.get<uint8_t>("bypass");
  if (arch > 1) fail(in.what, ": unknown architecture ", int(arch));
  if (stem > 1) fail(in.what, ": unknown stem ", int(stem));
  if (bypass > 2) fail(in.what, ": unknown bypass ", int(bypass));
  c.arch = Arch(arch), c.stem = Stem(stem), c.bypass = Bypass(bypass);
  const uint32_t classes = in.get<uint32_t>("classes");
  c.in_c = in.get<uint16_t>("input channels");
  c.in_h = in.get<uint16_t>("input height");
  c.in_w = in.get<uint16_t>("input width");
  const uint32_t base_e = in.get<uint32_t>("base_e"), incr_e = in.get<uint32_t>("incr_e");
  c.freq = in.get<uint16_t>("freq");
  c.pct_3x3 = in.get<double>("pct_3x3");
  c.sr = in.get<double>("sr");
  c.dropout = in.get<double>("dropout");
  // Bounds of a file, before the model is planned: nothing larger than a few GB of weights.
  if (classes < 1 || classes > 1000000) fail(in.what, ": class count ", classes, " out of range");
  if (base_e < 1 || base_e > 8192 || incr_e > 8192) fail(in.what, ": metaparameters out of range");
  if (c.in_h > 1024 || c.in_w > 1024) fail(in.what, ": input size out of range");
  c.num_classes = int(classes), c.base_e = int(base_e), c.incr_e = int(incr_e);
  try {
    c.validate();
  } catch (const Error& e) {
    fail(in.what, ": model configuration: ", e.what());
  }
  return c;
}

}  // namespace

std::vector<uint8_t> encode_compressed(const CompressedModel& cm, EncodeReport* report) {
  const Model plan(cm.config, 1, false);
  const std::vector<WeightTensor> wt = weight_tensors(plan);
  SQ_ASSERT(wt.size() == cm.weights.size(), "weight tensor count");
  SQ_ASSERT(cm.index_bits >= 1 && cm.index_bits <= 12, "index bits ", cm.index_bits);
  EncodeReport rep;
  Out o;
  o.bytes(reinterpret_cast<const uint8_t*>(kMagic), 8);
  o.put(kVersion);
  put_config(o, cm.config);
  SQ_ASSERT(cm.norm_mean.size() == cm.norm_std.size() &&
                (cm.norm_mean.empty() || int(cm.norm_mean.size()) == cm.config.in_c),
            "normalization of ", cm.norm_mean.size(), " channels");
  o.put(uint8_t(cm.norm_mean.size()));
  for (float v : cm.norm_mean) o.put(v);
  for (float v : cm.norm_std) o.put(v);
  o.put(uint8_t(cm.index_bits));
  o.put(uint16_t(wt.size()));
  rep.header_bytes = o.b.size();
  const uint32_t max_gap = (1u << cm.index_bits) - 1;
  for (size_t t = 0; t < wt.size(); ++t) {
    const QuantizedTensor& q = cm.weights[t];
    const int bits = int(std::lround(std::log2(double(q.codebook.size()))));
    SQ_ASSERT(bits >= 2 && bits <= 8 && q.codebook.size() == size_t(1) << bits, "codebook of ",
              q.codebook.size(), " entries");
    SQ_ASSERT(q.codes.size() == q.positions.size(), "codes and positions differ in length");
    const int filler = 1 << bits;
    // Entries (gap, symbol): gap = zeros skipped before the entry's position; a filler entry
    // (symbol 2^bits) stands for one more zero where a gap exceeds max_gap.
    std::vector<uint32_t> gaps;
    std::vector<int> symbols;
    int64_t pos = -1;
    for (size_t j = 0; j < q.positions.size(); ++j) {
      SQ_ASSERT(q.positions[j] < wt[t].count && int64_t(q.positions[j]) > pos, "positions must ascend");
      SQ_ASSERT(q.codes[j] < q.codebook.size(), "code out of range");
      uint64_t g = uint64_t(int64_t(q.positions[j]) - pos - 1);
      while (g > max_gap) {
        gaps.push_back(max_gap), symbols.push_back(filler);
        g -= uint64_t(max_gap) + 1;
      }
      gaps.push_back(uint32_t(g)), symbols.push_back(q.codes[j]);
      pos = q.positions[j];
    }
    std::vector<uint64_t> cf(size_t(filler) + 1, 0), gf(size_t(max_gap) + 1, 0);
    for (int s : symbols) ++cf[size_t(s)];
    for (uint32_t g : gaps) ++gf[g];
    const std::vector<uint8_t> cl = huffman_lengths(cf), gl = huffman_lengths(gf);
    BitWriter cw, gw;
    if (!symbols.empty()) {
      HuffmanEncoder ce(cl), ge(gl);
      for (size_t e = 0; e < symbols.size(); ++e) ce.put(cw, symbols[e]), ge.put(gw, int(gaps[e]));
    }
    const size_t start = o.b.size();
    o.put(uint8_t(bits));
    o.put(uint32_t(q.positions.size()));
    o.put(uint32_t(symbols.size()));
    for (float c : q.codebook) o.put(c);
    const size_t after_book = o.b.size();
    o.nibbles(cl);
    o.nibbles(gl);
    o.put(uint32_t(cw.bits()));
    o.put(uint32_t(gw.bits()));
    const size_t after_tables = o.b.size();
    o.bytes(cw.bytes().data(), cw.bytes().size());
    const size_t after_codes = o.b.size();
    o.bytes(gw.bytes().data(), gw.bytes().size());
    SectionSize s;
    s.name = wt[t].name;
    s.params = wt[t].count, s.kept = q.positions.size(), s.entries = symbols.size();
    s.codebook_bytes = after_book - start;  // (with the 9-byte section head)
    s.table_bytes = after_tables - after_book;
    s.code_bytes = after_codes - after_tables;
    s.index_bytes = o.b.size() - after_codes;
    rep.tensors.push_back(s);
  }
  const size_t before_exact = o.b.size();
  o.put(uint32_t(cm.exact.size()));
  for (float v : cm.exact) o.put(v);
  rep.exact_bytes = o.b.size() - before_exact;
  o.put(crc_of(o.b.data(), o.b.size()));
  rep.header_bytes += 4;
  rep.total_bytes = o.b.size();
  if (report) *report = rep;
  return o.b;
}

CompressedModel decode_compressed(const uint8_t* data, size_t size, const std::string& what) {
  In in{data, size, 0, what};
  in.need(8, "magic");
  if (std::memcmp(data, kMagic, 8) != 0) fail(what, ": not a squeeze compressed model (bad magic)");
  in.pos = 8;
  const uint16_t version = in.get<uint16_t>("version");
  if (version != kVersion) fail(what, ": format version ", version, " (this squeeze reads version ", kVersion, ")");
  if (size < 4 + 10) fail(what, ": truncated");
  uint32_t stored_crc;
  std::memcpy(&stored_crc, data + size - 4, 4);
  if (crc_of(data, size - 4) != stored_crc) fail(what, ": checksum mismatch (the file is damaged)");
  in.n = size - 4;  // the sections end where the checksum begins
  CompressedModel cm;
  cm.config = get_config(in);
  const int nnorm = in.get<uint8_t>("normalization channels");
  if (nnorm != 0 && nnorm != cm.config.in_c)
    fail(what, ": normalization of ", nnorm, " channels for ", cm.config.in_c, " input channels");
  for (std::vector<float>* v : {&cm.norm_mean, &cm.norm_std})
    for (int c = 0; c < nnorm; ++c) {
      v->push_back(in.get<float>("normalization"));
      if (!std::isfinite(v->back())) fail(what, ": normalization value is not finite");
    }
  for (float sd : cm.norm_std)
    if (!(sd > 0)) fail(what, ": normalization standard deviation ", sd, " is not positive");
  cm.index_bits = in.get<uint8_t>("index bits");
  if (cm.index_bits < 1 || cm.index_bits > 12) fail(what, ": index bits ", cm.index_bits, " out of range [1, 12]");
  const uint16_t ntensors = in.get<uint16_t>("tensor count");
  const Model plan(cm.config, 1, false);
  if (plan.layout().total > kMaxParams)
    fail(what, ": model of ", plan.layout().total, " parameters is too large");
  const std::vector<WeightTensor> wt = weight_tensors(plan);
  if (ntensors != wt.size()) fail(what, ": ", ntensors, " weight tensors, the model has ", wt.size());
  const uint32_t max_gap = (1u << cm.index_bits) - 1;
  size_t weights_total = 0;
  for (size_t t = 0; t < wt.size(); ++t) {
    const std::string where = what + ": " + wt[t].name;
    const int bits = in.get<uint8_t>("bits");
    if (bits < 2 || bits > 8) fail(where, ": code width ", bits, " out of range [2, 8]");
    if (t == 0) cm.bits = bits;
    const uint32_t kept = in.get<uint32_t>("kept count"), entries = in.get<uint32_t>("entry count");
    if (kept > wt[t].count) fail(where, ": ", kept, " kept weights of ", wt[t].count);
    if (entries < kept || entries > wt[t].count) fail(where, ": ", entries, " entries for ", kept, " kept weights");
    QuantizedTensor q;
    in.need(size_t(4) << bits, "codebook");
    q.codebook.resize(size_t(1) << bits);
    for (float& c : q.codebook) {
      c = in.get<float>("codebook");
      if (!std::isfinite(c)) fail(where, ": codebook value is not finite");
    }
    const int filler = 1 << bits;
    const std::vector<uint8_t> cl = in.nibbles(size_t(filler) + 1, "code lengths");
    const std::vector<uint8_t> gl = in.nibbles(size_t(max_gap) + 1, "gap lengths");
    const uint32_t cbits = in.get<uint32_t>("code stream length"), gbits = in.get<uint32_t>("gap stream length");
    const size_t cbytes = (size_t(cbits) + 7) / 8, gbytes = (size_t(gbits) + 7) / 8;
    in.need(cbytes, "code stream");
    const uint8_t* cstream = in.p + in.pos;
    in.pos += cbytes;
    in.need(gbytes, "gap stream");
    const uint8_t* gstream = in.p + in.pos;
    in.pos += gbytes;
    if (entries > cbits || entries > gbits) fail(where, ": streams too short for ", entries, " entries");
    if (entries > 0) {
      HuffmanDecoder cd(cl, where + " (code table)"), gd(gl, where + " (gap table)");
      BitReader cr(cstream, cbits, where + " (code stream)"), gr(gstream, gbits, where + " (gap stream)");
      q.positions.reserve(kept);
      q.codes.reserve(kept);
      int64_t pos = -1;
      for (uint32_t e = 0; e < entries; ++e) {
        const int sym = cd.get(cr), gap = gd.get(gr);
        pos += int64_t(gap) + 1;
        if (pos >= int64_t(wt[t].count)) fail(where, ": index ", pos, " past the tensor's ", wt[t].count, " weights");
        if (sym == filler) continue;
        if (q.positions.size() == kept) fail(where, ": more weights than the ", kept, " declared");
        q.positions.push_back(uint32_t(pos));
        q.codes.push_back(uint16_t(sym));
      }
      if (cr.position() != cbits || gr.position() != gbits) fail(where, ": stream has trailing bits");
    } else if (cbits || gbits) {
      fail(where, ": streams for an empty tensor");
    }
    if (q.positions.size() != kept) fail(where, ": ", q.positions.size(), " weights decoded, ", kept, " declared");
    weights_total += wt[t].count;
    cm.weights.push_back(std::move(q));
  }
  const uint32_t nexact = in.get<uint32_t>("exact count");
  if (nexact != plan.layout().total - weights_total)
    fail(what, ": ", nexact, " exact parameters, the model has ", plan.layout().total - weights_total);
  in.need(size_t(nexact) * 4, "exact parameters");
  cm.exact.resize(nexact);
  for (float& v : cm.exact) v = in.get<float>("exact parameters");
  if (in.pos != in.n) fail(what, ": ", in.n - in.pos, " unexpected bytes before the checksum");
  return cm;
}

void write_compressed(const std::string& path, const CompressedModel& cm, EncodeReport* report) {
  const std::vector<uint8_t> b = encode_compressed(cm, report);
  atomic_write_file(path, b.data(), b.size());
}

CompressedModel read_compressed(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path, ": cannot open");
  std::vector<uint8_t> b((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (f.bad()) fail(path, ": read error");
  return decode_compressed(b.data(), b.size(), path);
}

bool is_compressed_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  char m[8] = {};
  return f.read(m, 8) && std::memcmp(m, kMagic, 8) == 0;
}

}  // namespace sq
