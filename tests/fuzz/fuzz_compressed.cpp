// libFuzzer target for the compressed model decoder (core/compress.h): any input must either
// decode to a model whose dequantization stays in bounds, or be refused with sq::Error; never a
// crash, an out-of-bounds access (AddressSanitizer) or undefined behaviour (UBSan). Half of the
// inputs get a correct checksum, so that the structural checks past it are exercised too.
//
//   bash tests/fuzz/run.sh [SECONDS]      (clang's libFuzzer, from Debian's clang package)
//
// Built with -DSQ_FUZZ_SEED_WRITER instead, the program writes seed files (valid compressed
// models of a small configuration) into the directory given as its argument.
#include <zlib.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "core/compress.h"
#include "core/error.h"
#include "core/model.h"

#ifndef SQ_FUZZ_SEED_WRITER
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<uint8_t> b(data, data + size);
  if (size >= 4 && (size % 2 == 0 || (size > 8 && data[8] == 1))) {
    const uint32_t c = uint32_t(crc32(crc32(0L, Z_NULL, 0), b.data(), uInt(size - 4)));
    std::memcpy(b.data() + size - 4, &c, 4);
  }
  try {
    const sq::CompressedModel cm = sq::decode_compressed(b.data(), b.size(), "fuzz");
    const sq::Model plan(cm.config, 1, false);
    const std::vector<float> p = sq::dequantize(cm, plan);
    if (p.size() != plan.layout().total) __builtin_trap();
  } catch (const sq::Error&) {
  }
  return 0;
}
#else
#include <cstdio>
#include <random>

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  sq::ModelConfig c = sq::preset("squeezenet1.1");
  c.stem = sq::Stem::kSmall;
  c.in_c = 1, c.in_h = 28, c.in_w = 28, c.num_classes = 10;
  c.base_e = 16, c.incr_e = 8, c.bypass = sq::Bypass::kComplex;
  const sq::Model m(c, 1, false);
  std::vector<float> p(m.layout().total);
  m.init_params(p.data(), "torchvision", 5);
  int n = 0;
  for (const char* sched : {"none", "paper", "conv10=0.05,fire2.squeeze=0"})
    for (int bits : {2, 5, 8})
      for (int ib : {1, 4, 8}) {
        sq::CompressedModel cm = sq::quantize(m, p.data(), sq::magnitude_mask(m, p.data(), sq::parse_schedule(sched, m)), bits, ib);
        if (n % 2) cm.norm_mean = {0.3f}, cm.norm_std = {0.4f};
        sq::write_compressed(std::string(argv[1]) + "/seed" + std::to_string(n++) + ".sqz", cm);
      }
  std::printf("%d seeds\n", n);
  return 0;
}
#endif
