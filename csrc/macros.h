// Shared helpers for kernels that compile for both the host (CPU kernels) and the device
// (CUDA kernels): the per-element math of every op lives in DRDET_HOST_DEVICE functions so
// that CI, which has no GPU, exercises the same arithmetic the GPU runs.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define DRDET_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DRDET_HOST_DEVICE inline
#endif
