#include "core/model.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iomanip>
#include <new>
#include <sstream>

#include "core/error.h"
#include "core/rng.h"

namespace sq {

namespace {

int64_t conv_macs(const ConvGeom& g) {
  return int64_t(g.K) * g.C * g.R * g.S * g.P() * g.Q();
}

std::string gib(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", bytes / 1073741824.0);
  return buf;
}

// Max-pools follow conv1 and these Fire modules (index 0 = fire2).
bool pool_after_fire(Arch a, int i) {
  return a == Arch::kV10 ? (i == 2 || i == 6) : (i == 1 || i == 3);
}

}  // namespace

template <class T>
BasicModel<T>::BasicModel(const ModelConfig& cfg, int max_batch, bool allocate)
    : cfg_(cfg), max_batch_(max_batch) {
  cfg_.validate();
  if (max_batch < 1) fail("batch size must be at least 1, got ", max_batch);
  plan(allocate);
}

template <class T>
void BasicModel<T>::plan(bool allocate) {
  const ModelConfig& c = cfg_;
  acts_.push_back({c.in_c, c.in_h, c.in_w});  // act 0: the input
  int cur = 0;
  int feature = 0;  // torchvision's index into `features`
  auto new_act = [&](int ch, int h, int w) {
    if (h < 1 || w < 1)
      fail("input ", c.in_c, "x", c.in_h, "x", c.in_w, " is too small for ", arch_name(c.arch),
           " with the ", stem_name(c.stem), " stem (a layer's output would be empty)");
    acts_.push_back({ch, h, w});
    return int(acts_.size()) - 1;
  };
  auto add_pool = [&](const std::string& name) {
    Layer l;
    l.kind = LayerKind::kMaxPool;
    l.name = name;
    l.key = "features." + std::to_string(feature++);
    const ActShape a = acts_[cur];
    l.pool = PoolGeom{1, a.c, a.h, a.w, 3, 2, 0, true};
    l.in = cur;
    l.out = cur = new_act(a.c, l.pool.P(), l.pool.Q());
    l.param_begin = l.param_end = layout_.total;
    layers_.push_back(l);
  };
  auto add_conv = [&](const std::string& name, const std::string& key, int K, int k, int stride,
                      int pad) {
    Layer l;
    l.kind = LayerKind::kConv;
    l.name = name;
    l.key = key;
    const ActShape a = acts_[cur];
    l.conv = ConvGeom{1, a.c, a.h, a.w, K, k, k, stride, pad};
    l.in = cur;
    l.out = cur = new_act(K, l.conv.P(), l.conv.Q());
    l.param_begin = layout_.total;
    l.w = layout_.add(key + ".weight", {K, a.c, k, k});
    l.b = layout_.add(key + ".bias", {K});
    l.param_end = layout_.total;
    l.params = int64_t(l.param_end - l.param_begin);
    l.macs = conv_macs(l.conv);
    layers_.push_back(l);
  };

  // conv1 (+ ReLU) and the first pool.
  const bool v10 = c.arch == Arch::kV10;
  const int c1 = v10 ? 96 : 64;
  if (c.stem == Stem::kSmall)
    add_conv("conv1", "features.0", c1, 3, 1, 1);
  else
    add_conv("conv1", "features.0", c1, v10 ? 7 : 3, 2, 0);
  feature = 2;  // features.1 is the ReLU
  add_pool("pool1");

  // fire2 .. fire9
  auto fires = fire_channels(c);
  int pools = 1;
  for (int i = 0; i < 8; ++i) {
    Layer l;
    l.kind = LayerKind::kFire;
    l.name = "fire" + std::to_string(i + 2);
    l.key = "features." + std::to_string(feature++);
    const ActShape a = acts_[cur];
    const FireChannels& f = fires[i];
    l.fire = FireGeom{1, a.c, a.h, a.w, f.s, f.e1, f.e3};
    const int out_c = f.e1 + f.e3;
    l.in = cur;
    l.squeeze_act = new_act(f.s, a.h, a.w);
    l.param_begin = layout_.total;
    l.ws = layout_.add(l.key + ".squeeze.weight", {f.s, a.c, 1, 1});
    l.bs = layout_.add(l.key + ".squeeze.bias", {f.s});
    if (f.e1 > 0) {
      l.w1 = layout_.add(l.key + ".expand1x1.weight", {f.e1, f.s, 1, 1});
      l.b1 = layout_.add(l.key + ".expand1x1.bias", {f.e1});
    }
    if (f.e3 > 0) {
      l.w3 = layout_.add(l.key + ".expand3x3.weight", {f.e3, f.s, 3, 3});
      l.b3 = layout_.add(l.key + ".expand3x3.bias", {f.e3});
    }
    l.macs = conv_macs(l.fire.squeeze()) + conv_macs(l.fire.expand1()) +
             conv_macs(l.fire.expand3());
    const bool identity_site = (i % 2 == 1);  // fire3, 5, 7, 9
    if (c.bypass != Bypass::kNone && identity_site) {
      if (a.c != out_c)
        fail("simple bypass around ", l.name, " needs equal input and output channels, got ",
             a.c, " and ", out_c, " (choose metaparameters that keep them equal)");
      l.bypass = Bypass::kSimple;
    } else if (c.bypass == Bypass::kComplex) {
      l.bypass = Bypass::kComplex;
      l.bypass_conv = ConvGeom{1, a.c, a.h, a.w, out_c, 1, 1, 1, 0};
      l.bw = layout_.add(l.key + ".bypass.weight", {out_c, a.c, 1, 1});
      l.bb = layout_.add(l.key + ".bypass.bias", {out_c});
      l.macs += conv_macs(l.bypass_conv);
    }
    if (l.bypass != Bypass::kNone) l.fire_act = new_act(out_c, a.h, a.w);
    l.out = cur = new_act(out_c, a.h, a.w);
    l.param_end = layout_.total;
    l.params = int64_t(l.param_end - l.param_begin);
    layers_.push_back(l);
    if (pool_after_fire(c.arch, i)) add_pool("pool" + std::to_string(++pools));
  }

  // classifier: dropout, conv10 (+ ReLU), global average pool.
  {
    Layer l;
    l.kind = LayerKind::kDropout;
    l.name = "dropout";
    l.key = "classifier.0";
    const ActShape a = acts_[cur];
    l.in = cur;
    l.out = cur = new_act(a.c, a.h, a.w);
    l.param_begin = l.param_end = layout_.total;
    layers_.push_back(l);
  }
  add_conv("conv10", "classifier.1", c.num_classes, 1, 1, 0);
  {
    Layer l;
    l.kind = LayerKind::kAvgPool;
    l.name = "avgpool";
    l.key = "classifier.3";
    l.in = cur;
    l.out = cur = new_act(c.num_classes, 1, 1);  // stored (N, classes)
    l.param_begin = l.param_end = layout_.total;
    layers_.push_back(l);
  }

  // Activation arena and workspace, sized once for max_batch.
  size_t total = 0, largest = 0;
  for (const ActShape& a : acts_) {
    act_offset_.push_back(total);
    size_t n = size_t(a.per_sample()) * max_batch_;
    total += n;
    largest = std::max(largest, n);
  }
  size_t ws = 0;
  for (Layer& l : layers_) {
    if (l.kind == LayerKind::kConv) {
      ConvGeom g = l.conv;
      g.N = max_batch_;
      ws = std::max(ws, conv_workspace(g));
    } else if (l.kind == LayerKind::kFire) {
      FireGeom f = l.fire;
      f.N = max_batch_;
      ws = std::max(ws, fire_workspace(f));
      if (l.bypass == Bypass::kComplex) {
        ConvGeom g = l.bypass_conv;
        g.N = max_batch_;
        ws = std::max(ws, conv_workspace(g));
      }
    }
  }
  if (!allocate) return;
  const std::string what = str("the activations of ", arch_name(c.arch), " (input ", c.in_c, "x",
                               c.in_h, "x", c.in_w, ") for a batch of ", max_batch_);
  const double bytes = (double(total) + 2.0 * double(largest) + double(std::max<size_t>(ws, 1))) * sizeof(T);
  require_memory(bytes, what);
  try {
    arena_.assign(total, T(0));
    grad_a_.assign(largest, T(0));
    grad_b_.assign(largest, T(0));
    ws_.assign(std::max<size_t>(ws, 1), T(0));
  } catch (const std::bad_alloc&) {
    fail(what, ": cannot allocate ", gib(bytes), " GiB; lower the batch size or the model's width");
  }
}

namespace {

// The first whitespace-separated number of a file ("max" and anything unreadable: nothing).
bool read_bytes(const std::string& path, double* v) {
  std::FILE* f = std::fopen(path.c_str(), "r");
  if (!f) return false;
  unsigned long long x = 0;
  const bool ok = std::fscanf(f, "%llu", &x) == 1;
  std::fclose(f);
  if (ok) *v = double(x);
  return ok;
}

// The value of `key` in a memory.stat file (0 when absent).
double stat_value(const std::string& path, const char* key) {
  std::FILE* f = std::fopen(path.c_str(), "r");
  if (!f) return 0;
  char name[128];
  unsigned long long x = 0;
  double v = 0;
  while (std::fscanf(f, "%127s %llu", name, &x) == 2)
    if (std::strcmp(name, key) == 0) {
      v = double(x);
      break;
    }
  std::fclose(f);
  return v;
}

}  // namespace

double cgroup_memory_available(const std::string& self_cgroup, const std::string& cgroup_root) {
  double best = INFINITY;
  std::FILE* f = std::fopen(self_cgroup.c_str(), "r");
  if (!f) return best;
  char line[4096];
  while (std::fgets(line, sizeof line, f)) {
    // "ID:CONTROLLERS:PATH": v2 is "0::PATH" under the root; v1's memory controller has its own
    // mount, ROOT/memory.
    std::string l(line);
    if (!l.empty() && l.back() == '\n') l.pop_back();
    const size_t a = l.find(':'), b = a == std::string::npos ? a : l.find(':', a + 1);
    if (b == std::string::npos) continue;
    const std::string controllers = l.substr(a + 1, b - a - 1);
    std::string path = l.substr(b + 1);
    const bool v2 = controllers.empty() && l.compare(0, a, "0") == 0;
    bool v1 = false;
    std::stringstream in(controllers);
    for (std::string c; std::getline(in, c, ',');) v1 = v1 || c == "memory";
    if (!v1 && !v2) continue;
    const std::string base = v1 ? cgroup_root + "/memory" : cgroup_root;
    // The process's cgroup, then each ancestor up to the root (limits are hierarchical).
    while (true) {
      const std::string dir = base + (path == "/" ? "" : path);
      double limit = 0, usage = 0;
      const bool limited = v1 ? read_bytes(dir + "/memory.limit_in_bytes", &limit) && limit < 0x1p62
                              : read_bytes(dir + "/memory.max", &limit);
      if (limited && read_bytes(dir + (v1 ? "/memory.usage_in_bytes" : "/memory.current"), &usage)) {
        const double cache = stat_value(dir + "/memory.stat", v1 ? "total_inactive_file" : "inactive_file");
        best = std::min(best, std::max(0.0, limit - std::max(0.0, usage - cache)));
      }
      if (path.empty() || path == "/") break;
      const size_t slash = path.find_last_of('/');
      path = slash == 0 || slash == std::string::npos ? "/" : path.substr(0, slash);
    }
  }
  std::fclose(f);
  return best;
}

void require_memory(double bytes, const std::string& what) {
  // MemAvailable: what can be allocated without swapping or the OOM killer; else all of it; and
  // no more than the cgroup allows.
  double avail = 0;
  std::FILE* f = std::fopen("/proc/meminfo", "r");
  if (f) {
    char line[256];
    unsigned long long kb = 0;
    while (std::fgets(line, sizeof line, f))
      if (std::sscanf(line, "MemAvailable: %llu kB", &kb) == 1) avail = double(kb) * 1024.0;
    std::fclose(f);
  }
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
  if (avail <= 0 && pages > 0 && page > 0) avail = double(pages) * double(page);
  const double cgroup = cgroup_memory_available();
  const bool by_cgroup = std::isfinite(cgroup) && (avail <= 0 || cgroup < avail);
  if (by_cgroup)
    avail = cgroup;
  else if (avail <= 0)
    return;  // nothing says how much there is
  if (bytes > avail)
    fail(what, " need ", gib(bytes), " GiB, more than the ", gib(avail), " GiB of memory ",
         by_cgroup ? "this process's cgroup leaves it" : "available",
         "; lower the batch size or the model's width");
}

template <class T>
size_t BasicModel<T>::arena_bytes() const {
  return (arena_.size() + grad_a_.size() + grad_b_.size() + ws_.size()) * sizeof(T);
}

template <class T>
void BasicModel<T>::init_params(T* params, const std::string& scheme, uint64_t seed) const {
  if (scheme != "torchvision" && scheme != "xavier" && scheme != "lsuv")
    fail("unknown init '", scheme, "' (known: torchvision, xavier, lsuv)");
  for (size_t t = 0; t < layout_.tensors.size(); ++t) {
    const ParamSpec& p = layout_.tensors[t];
    T* w = params + p.offset;
    if (p.shape.size() == 1) {  // bias
      std::fill(w, w + p.count, T(0));
      continue;
    }
    SplitMix rng(sample_key(seed, RngStream::kInit, 0, t));
    if (p.name == "classifier.1.weight") {  // conv10 ~ N(0, 0.01), as both references do
      for (size_t i = 0; i < p.count; ++i) w[i] = T(0.01 * rng.normal());
      continue;
    }
    const double fan_in = double(p.count) / double(p.shape[0]);
    // kaiming_uniform_ (a=0): bound = sqrt(2) * sqrt(3 / fan_in); Caffe xavier: sqrt(3 / fan_in).
    const double bound = scheme == "xavier" ? std::sqrt(3.0 / fan_in) : std::sqrt(6.0 / fan_in);
    for (size_t i = 0; i < p.count; ++i) w[i] = T((2.0 * rng.uniform() - 1.0) * bound);
  }
}

template <class T>
void BasicModel<T>::lsuv_rescale(T* params, const T* input, int N, double target,
                                 const std::function<void(double*, size_t)>& allreduce_sum) {
  SQ_ASSERT(target > 0, "lsuv target must be positive");
  struct Unit {
    size_t w, b;       // weight and bias offsets
    int act;           // activation holding the unit's output
    size_t off, len;   // its slice of that activation, per the batch (elements)
    std::string name;
  };
  std::vector<Unit> units;
  auto count_at = [&](size_t offset) {
    for (const ParamSpec& p : layout_.tensors)
      if (p.offset == offset) return p.count;
    SQ_ASSERT(false, "no tensor at offset ", offset);
    return size_t(0);
  };
  for (const Layer& l : layers_) {
    if (l.kind == LayerKind::kConv) {
      units.push_back({l.w, l.b, l.out, 0, size_t(acts_[l.out].per_sample()) * N, l.name});
    } else if (l.kind == LayerKind::kFire) {
      const FireGeom& f = l.fire;
      const size_t plane = size_t(f.H) * f.W * N;
      const int y = l.bypass == Bypass::kNone ? l.out : l.fire_act;
      units.push_back({l.ws, l.bs, l.squeeze_act, 0, size_t(f.S) * plane, l.name + ".squeeze"});
      if (f.E1 > 0) units.push_back({l.w1, l.b1, y, 0, size_t(f.E1) * plane, l.name + ".expand1x1"});
      if (f.E3 > 0)
        units.push_back({l.w3, l.b3, y, size_t(f.E1) * plane, size_t(f.E3) * plane,
                         l.name + ".expand3x3"});
    }
  }
  for (const Unit& u : units) {
    const size_t nw = count_at(u.w), nb = count_at(u.b);
    for (int iter = 0; iter < 4; ++iter) {
      double stat[2] = {0, double(u.len)};  // sum of squares, count
      if (N > 0) {
        forward(params, input, N, false, nullptr);
        const T* out = act(u.act) + u.off;
        for (size_t i = 0; i < u.len; ++i) stat[0] += double(out[i]) * double(out[i]);
      }
      if (allreduce_sum) allreduce_sum(stat, 2);
      const double ms = stat[1] > 0 ? stat[0] / stat[1] : 0.0;
      if (!(ms > 0) || !std::isfinite(ms))
        fail("--init lsuv: ", u.name, " outputs ", ms > 0 ? "non-finite values" : "only zeros",
             " on the initialisation batch; use --init torchvision");
      if (std::abs(ms / target - 1.0) < 0.02) break;
      const T scale = T(std::sqrt(target / ms));
      for (size_t i = 0; i < nw; ++i) params[u.w + i] *= scale;
      for (size_t i = 0; i < nb; ++i) params[u.b + i] *= scale;
    }
  }
}

template <class T>
const T* BasicModel<T>::forward(const T* params, const T* input, int N, bool train,
                            const uint64_t* dropout_keys) {
  SQ_ASSERT(N >= 1 && N <= max_batch_, "batch ", N, " outside [1, ", max_batch_, "]");
  n_ = N;
  std::memcpy(act(0), input, sizeof(T) * size_t(acts_[0].per_sample()) * N);
  const T* P = params;
  T* ws = ws_.data();
  for (const Layer& l : layers_) {
    const ActShape& ain = acts_[l.in];
    const size_t n_in = size_t(ain.per_sample()) * N;
    switch (l.kind) {
      case LayerKind::kConv: {
        ConvGeom g = l.conv;
        g.N = N;
        conv_forward(g, act(l.in), P + l.w, P + l.b, act(l.out), true, ws);
        break;
      }
      case LayerKind::kMaxPool: {
        PoolGeom g = l.pool;
        g.N = N;
        maxpool_forward(g, act(l.in), act(l.out));
        break;
      }
      case LayerKind::kFire: {
        FireGeom f = l.fire;
        f.N = N;
        FireParams<const T> fp{P + l.ws, P + l.bs, P + l.w1, P + l.b1, P + l.w3, P + l.b3};
        T* y = l.bypass == Bypass::kNone ? act(l.out) : act(l.fire_act);
        fire_forward(f, act(l.in), fp, act(l.squeeze_act), y, ws);
        if (l.bypass == Bypass::kSimple) {
          std::memcpy(act(l.out), act(l.in), sizeof(T) * n_in);
          add_inplace(act(l.out), y, n_in);
        } else if (l.bypass == Bypass::kComplex) {
          ConvGeom g = l.bypass_conv;
          g.N = N;
          conv_forward(g, act(l.in), P + l.bw, P + l.bb, act(l.out), false, ws);
          add_inplace(act(l.out), y, size_t(acts_[l.out].per_sample()) * N);
        }
        break;
      }
      case LayerKind::kDropout:
        if (train && cfg_.dropout > 0.0)
          dropout_forward(N, ain.c, ain.h * ain.w, T(cfg_.dropout), dropout_keys, act(l.in),
                          act(l.out));
        else
          std::memcpy(act(l.out), act(l.in), sizeof(T) * n_in);
        break;
      case LayerKind::kAvgPool:
        avgpool_forward(N, ain.c, ain.h * ain.w, act(l.in), act(l.out));
        break;
    }
  }
  return act(layers_.back().out);
}

template <class T>
void BasicModel<T>::backward(const T* params, const T* dlogits, T* grads, int N,
                     const uint64_t* dropout_keys, const std::function<void(size_t)>& on_ready) {
  SQ_ASSERT(N == n_, "backward batch ", N, " differs from the forward's ", n_);
  const T* P = params;
  T* G = grads;
  T* ws = ws_.data();
  T* dcur = grad_a_.data();   // gradient w.r.t. the current layer's output
  T* dprev = grad_b_.data();  // gradient w.r.t. its input
  std::memcpy(dcur, dlogits, sizeof(T) * size_t(cfg_.num_classes) * N);
  for (size_t li = layers_.size(); li-- > 0;) {
    const Layer& l = layers_[li];
    const ActShape& ain = acts_[l.in];
    const size_t n_in = size_t(ain.per_sample()) * N;
    const bool first = (li == 0);  // the input needs no gradient
    switch (l.kind) {
      case LayerKind::kAvgPool:
        avgpool_backward(N, ain.c, ain.h * ain.w, dcur, dprev);
        break;
      case LayerKind::kConv: {
        ConvGeom g = l.conv;
        g.N = N;
        relu_backward(dcur, act(l.out), dcur, size_t(acts_[l.out].per_sample()) * N);
        conv_backward(g, act(l.in), P + l.w, dcur, G + l.w, G + l.b, first ? nullptr : dprev,
                      false, ws);
        break;
      }
      case LayerKind::kDropout:
        if (cfg_.dropout > 0.0)
          dropout_backward(N, ain.c, ain.h * ain.w, T(cfg_.dropout), dropout_keys, dcur, dprev);
        else
          std::memcpy(dprev, dcur, sizeof(T) * n_in);
        break;
      case LayerKind::kMaxPool: {
        PoolGeom g = l.pool;
        g.N = N;
        maxpool_backward(g, act(l.in), dcur, dprev);
        break;
      }
      case LayerKind::kFire: {
        FireGeom f = l.fire;
        f.N = N;
        FireParams<const T> fp{P + l.ws, P + l.bs, P + l.w1, P + l.b1, P + l.w3, P + l.b3};
        FireParams<T> fg{G + l.ws, G + l.bs, G + l.w1, G + l.b1, G + l.w3, G + l.b3};
        const T* y = l.bypass == Bypass::kNone ? act(l.out) : act(l.fire_act);
        // With a bypass, d(out) flows unchanged both into the Fire module and into the bypass.
        fire_backward(f, act(l.in), fp, act(l.squeeze_act), y, dcur, fg, dprev, false, ws);
        if (l.bypass == Bypass::kSimple) {
          add_inplace(dprev, dcur, n_in);
        } else if (l.bypass == Bypass::kComplex) {
          ConvGeom g = l.bypass_conv;
          g.N = N;
          conv_backward(g, act(l.in), P + l.bw, dcur, G + l.bw, G + l.bb, dprev, true, ws);
        }
        break;
      }
    }
    if (l.param_end > l.param_begin && on_ready) on_ready(l.param_begin);
    std::swap(dcur, dprev);
  }
}

template <class T>
int64_t total_macs(const BasicModel<T>& m) {
  int64_t t = 0;
  for (const Layer& l : m.layers()) t += l.macs;
  return t;
}

template <class T>
std::string model_table(const BasicModel<T>& m) {
  std::ostringstream os;
  const ModelConfig& c = m.config();
  os << arch_name(c.arch) << "  stem " << stem_name(c.stem) << "  bypass " << bypass_name(c.bypass)
     << "  input " << c.in_c << "x" << c.in_h << "x" << c.in_w << "  classes " << c.num_classes
     << "\n";
  os << "metaparameters: base_e " << c.base_e << ", incr_e " << c.incr_e << ", pct_3x3 "
     << c.pct_3x3 << ", freq " << c.freq << ", SR " << c.sr << "\n";
  os << std::left << std::setw(9) << "layer" << std::setw(14) << "module" << std::setw(24)
     << "filters" << std::right << std::setw(16) << "output" << std::setw(12) << "params"
     << std::setw(16) << "MACs" << "\n";
  int64_t params = 0, macs = 0;
  for (const Layer& l : m.layers()) {
    const ActShape& o = m.acts()[l.out];
    std::string filters;
    switch (l.kind) {
      case LayerKind::kConv:
        filters = str(l.conv.K, "x", l.conv.R, "x", l.conv.S, "/", l.conv.stride,
                      l.conv.pad ? str(" pad ", l.conv.pad) : std::string());
        break;
      case LayerKind::kMaxPool:
        filters = "max 3x3/2 ceil";
        break;
      case LayerKind::kFire:
        filters = str("s", l.fire.S, " e", l.fire.E1, "+", l.fire.E3,
                      l.bypass == Bypass::kSimple    ? " +id"
                      : l.bypass == Bypass::kComplex ? " +1x1"
                                                     : "");
        break;
      case LayerKind::kDropout:
        filters = str("p ", c.dropout);
        break;
      case LayerKind::kAvgPool:
        filters = "global avg";
        break;
    }
    std::string shape = str(o.c, "x", o.h, "x", o.w);
    os << std::left << std::setw(9) << l.name << std::setw(14) << l.key << std::setw(24) << filters
       << std::right << std::setw(16) << shape << std::setw(12) << (l.params ? str(l.params) : "")
       << std::setw(16) << (l.macs ? str(l.macs) : "") << "\n";
    params += l.params;
    macs += l.macs;
  }
  os << std::left << std::setw(63) << "total" << std::right << std::setw(12) << params
     << std::setw(16) << macs << "\n";
  os << "parameters: " << params << " (" << std::fixed << std::setprecision(2)
     << params * 4.0 / 1e6 << " MB fp32); multiply-accumulates per image: " << macs << "\n";
  return os.str();
}

template class BasicModel<float>;
template class BasicModel<double>;
template std::string model_table(const BasicModel<float>&);
template std::string model_table(const BasicModel<double>&);
template int64_t total_macs(const BasicModel<float>&);
template int64_t total_macs(const BasicModel<double>&);

double check_layers_tolerance(OperandRounding r) {
  return r == OperandRounding::kTf32 ? 1e-2 : r == OperandRounding::kBf16 ? 5e-2 : 1e-4;
}

std::vector<char> relu_backward_by_next(const std::vector<Layer>& layers) {
  std::vector<char> out(layers.size(), 0);
  for (size_t i = 0; i + 1 < layers.size(); ++i) {
    const Layer& l = layers[i];
    const Layer& next = layers[i + 1];
    const bool relu_out = l.kind == LayerKind::kConv || (l.kind == LayerKind::kFire && l.bypass == Bypass::kNone);
    int readers = 0;
    for (const Layer& r : layers) readers += r.in == l.out;
    const bool final_dx = next.kind == LayerKind::kMaxPool || next.kind == LayerKind::kAvgPool ||
                          next.kind == LayerKind::kDropout || next.kind == LayerKind::kConv ||
                          (next.kind == LayerKind::kFire && next.bypass == Bypass::kNone);
    out[i] = relu_out && next.in == l.out && readers == 1 && final_dx;
  }
  return out;
}

}  // namespace sq
