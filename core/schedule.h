// Learning-rate schedules. step counts from 0; total = steps in the whole run.
//  poly:     the paper's (Caffe "poly", power 1): lr * (1 - step / total), linear to zero
//  cosine:   lr * (1 + cos(pi * step / total)) / 2
//  step:     lr * gamma ^ floor(step / step_size)
//  constant: lr
// Optional linear warm-up over the first `warmup` steps, from lr / warmup up to the schedule's
// value (the schedule itself still counts from step 0).
#pragma once
#include <cstdint>
#include <string>

namespace sq {

struct Schedule {
  std::string kind = "poly";
  double lr = 0.04;
  int64_t warmup = 0;
  int64_t step_size = 0;  // for "step"; 0 = a third of the run
  double gamma = 0.1;
};

void validate(const Schedule& s);  // throws sq::Error naming the bad setting
double lr_at(const Schedule& s, int64_t step, int64_t total);

}  // namespace sq
