// What bench_ddp (CPU) and bench_ddp_gpu share: their command line, the optimizer's constants,
// the AlexNet-sized gradient buffer's size and "tensor" boundaries, and each rank's random batch.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/error.h"

namespace sq::bench {

constexpr float kLr = 0.01f, kMomentum = 0.9f, kWeightDecay = 2e-4f;
constexpr size_t kAlexNetFloats = 61100840;
constexpr size_t kAlexNetBoundary = 1u << 16;  // uniform "tensor" boundaries of the big buffer

// The AlexNet-sized buffer's tensor boundaries: every kAlexNetBoundary floats, and its end.
inline std::vector<size_t> alexnet_bounds() {
  std::vector<size_t> b;
  for (size_t o = 0; o < kAlexNetFloats; o += kAlexNetBoundary) b.push_back(o);
  b.push_back(kAlexNetFloats);
  return b;
}

// A batch of N random inputs and labels, different on every rank (dropout keys left zero).
struct RankBatch {
  std::vector<float> input;
  std::vector<int32_t> labels;
  std::vector<uint64_t> keys;
};
inline RankBatch random_batch(const ModelConfig& cfg, int N, int rank) {
  RankBatch b{std::vector<float>(size_t(cfg.in_c) * cfg.in_h * cfg.in_w * N),
              std::vector<int32_t>(N), std::vector<uint64_t>(N)};
  std::mt19937 rng(1234 + 7919 * unsigned(rank));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (float& x : b.input) x = nd(rng);
  std::uniform_int_distribution<int> ud(0, cfg.num_classes - 1);
  for (int32_t& l : b.labels) l = ud(rng);
  return b;
}

struct DdpArgs {
  std::string config = "fmnist";
  int local_batch = 64;
  int steps = 10;
  int warmup = 2;
  double bucket_mib = 1.0;
  int threads = -1;  // -1: cores / local ranks (CPU only)
  std::vector<double> sweep;  // --sweep-buckets (CPU only)
  bool alexnet = true;
  std::string json;
  bool help = false;  // --help: the caller prints its usage and exits
};

// The command line over the defaults in `a` (--name value or --name=value). cpu_only: whether
// --threads and --sweep-buckets are accepted.
inline DdpArgs parse_ddp_args(int argc, char** argv, DdpArgs a, bool cpu_only) {
  for (int i = 1; i < argc; ++i) {
    std::string s = argv[i], v;
    const auto eq = s.find('=');
    const bool has_eq = s.rfind("--", 0) == 0 && eq != std::string::npos;
    if (has_eq) {
      v = s.substr(eq + 1);
      s = s.substr(0, eq);
    }
    auto val = [&]() -> std::string {
      if (has_eq) return v;
      if (i + 1 >= argc) fail(s, " needs a value");
      return argv[++i];
    };
    if (!cpu_only && (s == "--threads" || s == "--sweep-buckets"))
      fail(s, " is for the CPU benchmark (bench_ddp)");
    if (s == "--config")
      a.config = val();
    else if (s == "--local-batch")
      a.local_batch = std::stoi(val());
    else if (s == "--steps")
      a.steps = std::stoi(val());
    else if (s == "--warmup")
      a.warmup = std::stoi(val());
    else if (s == "--bucket-mib")
      a.bucket_mib = std::stod(val());
    else if (s == "--threads")
      a.threads = std::stoi(val());
    else if (s == "--json")
      a.json = val();
    else if (s == "--no-alexnet")
      a.alexnet = false;
    else if (s == "--sweep-buckets") {
      std::stringstream ss(val());
      std::string item;
      while (std::getline(ss, item, ','))
        if (!item.empty()) a.sweep.push_back(std::stod(item));
      if (a.sweep.empty()) fail("--sweep-buckets needs a list of MiB values");
    } else if (s == "--help" || s == "-h")
      a.help = true;
    else
      fail("unknown argument '", argv[i], "'");
  }
  if (a.local_batch < 1) fail("--local-batch must be >= 1");
  if (a.steps < 1 || a.warmup < 1) fail("--steps and --warmup must be >= 1");
  if (a.bucket_mib < 0) fail("--bucket-mib must not be negative");
  for (double x : a.sweep)
    if (x < 0) fail("--sweep-buckets: negative cap ", x);
  return a;
}

}  // namespace sq::bench
