// The switch between the CUDA kernels that have been verified on a GPU (version 1, the default)
// and their rewrites (version 2: csrc/cuda/*_v2.cu, compiled in CI but NOT YET RUN ON A GPU).
// DRDET_CUDA_KERNELS=v1|v2 is read on every call of a CUDA op, so the Python setter
// drdet.layers.set_cuda_kernels (which writes the variable) takes effect at once.
#pragma once

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>

namespace drdet {

// 1 (unset, empty or "v1") or 2 ("v2"); anything else is an error naming the variable.
inline int cuda_kernel_version() {
  const char* value = std::getenv("DRDET_CUDA_KERNELS");
  if (value == nullptr || value[0] == '\0' || std::strcmp(value, "v1") == 0) return 1;
  if (std::strcmp(value, "v2") == 0) return 2;
  TORCH_CHECK(false, "DRDET_CUDA_KERNELS must be 'v1' (the default) or 'v2', got '", value, "'");
  return 1;
}

}  // namespace drdet
