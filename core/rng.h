// Counter-based random numbers. Every random draw in training is a pure function of
// (seed, stream, epoch, global sample index, element), never of the rank or of how many draws
// came before, so that N ranks compute the same function as one, and a resumed run needs no
// saved generator state.
#pragma once
#include <cstdint>

// The hash functions also run in CUDA kernels (dropout masks on the GPU are the CPU's masks).
#ifdef __CUDACC__
#define SQ_HOST_DEVICE __host__ __device__
#else
#define SQ_HOST_DEVICE
#endif

namespace sq {

// SplitMix64 finaliser: a bijective 64-bit mix with good avalanche.
SQ_HOST_DEVICE inline uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

SQ_HOST_DEVICE inline uint64_t hash_combine(uint64_t a, uint64_t b) { return mix64(a ^ mix64(b)); }

// Streams keep independent uses of one seed apart.
enum class RngStream : uint64_t {
  kInit = 1,       // parameter initialisation
  kShuffle = 2,    // per-epoch data order
  kAugment = 3,    // random crop / flip
  kDropout = 4,    // dropout masks
};

// Key of one sample's draws in one epoch for one purpose.
inline uint64_t sample_key(uint64_t seed, RngStream stream, uint64_t epoch, uint64_t sample) {
  return hash_combine(hash_combine(hash_combine(seed, static_cast<uint64_t>(stream)), epoch), sample);
}

// Uniform in [0, 1) from the top 24 bits of a hash (exact in float).
SQ_HOST_DEVICE inline float uniform01(uint64_t h) { return static_cast<float>(h >> 40) * (1.0f / 16777216.0f); }

// A small sequential generator for set-up work (initialisation, shuffles), seeded by a key.
struct SplitMix {
  uint64_t state;
  explicit SplitMix(uint64_t key) : state(key) {}
  uint64_t next() { return mix64(state += 0x9E3779B97F4A7C15ull); }
  double uniform() { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }
  // Uniform integer in [0, n) without modulo bias worth caring about (n << 2^64).
  uint64_t below(uint64_t n) { return static_cast<uint64_t>((static_cast<unsigned __int128>(next()) * n) >> 64); }
  double normal();  // standard normal (Box–Muller), defined in core/rng.cpp
};

}  // namespace sq
