#include "launch/threads.h"

#include <omp.h>

#include "core/error.h"

extern "C" void openblas_set_num_threads(int);

namespace sq {

void set_threads(int n) {
  if (n < 0) fail("--threads must not be negative, got ", n);
  if (n == 0) n = omp_get_num_procs();
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

int threads() { return omp_get_max_threads(); }

}  // namespace sq
