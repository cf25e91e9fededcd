// Version 2 of the nms / batched_nms CUDA kernels (cuda/nms_cuda_v2.cu; not yet run on a GPU),
// called by the registered CUDA ops of cuda/nms_cuda.cu when DRDET_CUDA_KERNELS=v2.
#pragma once

#include <ATen/core/Tensor.h>

namespace drdet {

// Original indices of the kept boxes in decreasing score order; class_ids undefined for nms.
// `op` names the op in error messages.
at::Tensor nms_cuda_v2(const char* op, const at::Tensor& boxes, const at::Tensor& scores,
                       const at::Tensor& class_ids, double iou_threshold);

}  // namespace drdet
