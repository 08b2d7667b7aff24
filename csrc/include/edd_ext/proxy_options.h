// The proxy-Dirichlet KL's options as its kernels take them (parsed and checked once for every backend by
// parse_proxy_options, edd_ext/loss_options.h). Light: no torch headers, so that the per-capability CPU kernels
// can take it too.
#pragma once

#include "edd_ext/dirichlet_math.h"

namespace edd_ext {

struct ProxyOptions {
  math::ProxyMode mode = math::ProxyMode::kReverse;
  bool mkl = true;
  double model_offset = 1, log_model_offset = 0, target_offset = 1, eps = 0, max_precision = 0;  // 0: no clamp
};

}  // namespace edd_ext
