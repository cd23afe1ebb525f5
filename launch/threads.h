// Thread count for OpenMP loops and OpenBLAS (one OpenMP pool when Debian's OpenMP OpenBLAS
// build is linked).
#pragma once

namespace sq {
// n = 0: all cores (OpenMP's default). Throws sq::Error for negative n.
void set_threads(int n);
int threads();
}  // namespace sq
