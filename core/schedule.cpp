#include "core/schedule.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace sq {

void validate(const Schedule& s) {
  if (s.kind != "poly" && s.kind != "cosine" && s.kind != "step" && s.kind != "constant")
    fail("unknown --schedule '", s.kind, "' (known: poly, cosine, step, constant)");
  if (!(s.lr > 0.0) || !std::isfinite(s.lr)) fail("--lr must be positive, got ", s.lr);
  if (s.warmup < 0) fail("--warmup-steps must not be negative, got ", s.warmup);
  if (s.step_size < 0) fail("--step-size must not be negative, got ", s.step_size);
  if (!(s.gamma > 0.0 && s.gamma <= 1.0)) fail("--gamma must be in (0, 1], got ", s.gamma);
}

double lr_at(const Schedule& s, int64_t step, int64_t total) {
  const double t = total > 0 ? std::min(1.0, double(step) / double(total)) : 0.0;
  double lr = s.lr;
  if (s.kind == "poly") {
    lr = s.lr * (1.0 - t);
  } else if (s.kind == "cosine") {
    lr = s.lr * 0.5 * (1.0 + std::cos(M_PI * t));
  } else if (s.kind == "step") {
    const int64_t size = s.step_size > 0 ? s.step_size : std::max<int64_t>(1, total / 3);
    lr = s.lr * std::pow(s.gamma, double(step / size));
  }
  if (s.warmup > 0 && step < s.warmup) lr *= double(step + 1) / double(s.warmup);
  return lr;
}

}  // namespace sq
