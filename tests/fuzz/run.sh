#!/usr/bin/env bash
# Fuzzes the compressed model decoder with libFuzzer, AddressSanitizer and UBSan (Debian's clang):
#   bash tests/fuzz/run.sh [SECONDS]   (default 60; the corpus and any crash land in build-fuzz/)
# Exits non-zero if the fuzzer finds a crash, a leak or undefined behaviour.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-60}
out=build-fuzz
mkdir -p $out/corpus
srcs="core/compress.cpp core/huffman.cpp core/model.cpp core/config.cpp core/params.cpp core/safetensors.cpp
      core/rng.cpp $(ls kernels/cpu/*.cpp)"
flags="-std=c++17 -O1 -g -I. -fno-sanitize-recover=all -DNDEBUG"
libs="-lz -lopenblas -fopenmp"
clang++ $flags -DSQ_FUZZ_SEED_WRITER tests/fuzz/fuzz_compressed.cpp $srcs $libs -o $out/seed_writer
$out/seed_writer $out/corpus
clang++ $flags -fsanitize=fuzzer,address,undefined tests/fuzz/fuzz_compressed.cpp $srcs $libs -o $out/fuzz_compressed
ASAN_OPTIONS=detect_leaks=1 $out/fuzz_compressed -max_total_time="$secs" -max_len=20000 -rss_limit_mb=4096 \
  -artifact_prefix=$out/ $out/corpus
