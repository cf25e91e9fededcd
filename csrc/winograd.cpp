// Schemas of the Winograd F(4x4, 3x3) convolution ops (CPU only; on CUDA, cuDNN chooses its own
// algorithms). Both take one or more feature maps (levels) with the same number of channels,
// (N, C, H, W) of any memory format, convolved with one filter: their tiles go through one set of matrix
// products. The filter is passed as its Winograd transform U (36, C, K), which
// drdet/layers/winograd.py computes (with the autograd around these ops); kernels and layout:
// cpu/winograd_cpu.cpp.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(drdet, m) {
  // xs[l] (N, C, H, W), U (36, C, K), bias (K,) -> ys[l] (N, K, H, W) channels_last, padding 1
  m.def("winograd_conv3x3(Tensor[] xs, Tensor u, Tensor? bias) -> Tensor[]");
  // grads[l] (N, K, H, W) -> (grad_xs[l] (N, C, H, W) channels_last or [], grad_u (36, C, K) or
  // an empty tensor)
  m.def(
      "winograd_conv3x3_backward(Tensor[] grads, Tensor[] xs, Tensor u, bool input_grad, "
      "bool weight_grad) -> (Tensor[], Tensor)");
}
