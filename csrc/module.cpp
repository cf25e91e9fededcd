// The Python module drdet._C. Importing it runs the static registrations of every op
// (TORCH_LIBRARY_FRAGMENT / TORCH_LIBRARY_IMPL in csrc/*.cpp, csrc/cpu, csrc/cuda), after
// which the ops are reachable as torch.ops.drdet.<name>. The CPU instruction-set ops
// (cpu/simd.h) are registered here; drdet/layers/cpu_isa.py wraps them.
#include <torch/extension.h>

#include <string>
#include <vector>

#include "cpu/simd.h"
#include "macros.h"

namespace drdet {

bool built_with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

namespace {

// The instruction sets this CPU supports, the baseline first.
std::vector<std::string> supported_cpu_isas() {
  std::vector<std::string> names;
  for (int i = 0; i <= static_cast<int>(simd::best_cpu_isa()); ++i) {
    names.emplace_back(simd::isa_name(static_cast<simd::Isa>(i)));
  }
  return names;
}

std::string cpu_isa() { return simd::isa_name(simd::cpu_isa()); }

void set_cpu_isa(c10::string_view name) {
  const std::string text(name);
  simd::Isa isa;
  TORCH_CHECK(simd::parse_isa(text.c_str(), isa), "set_cpu_isa: unknown instruction set '",
              text, "'; the choices are baseline, avx2, avx512");
  TORCH_CHECK(simd::set_cpu_isa(isa), "set_cpu_isa: this CPU does not support ", text,
              " (it supports ", c10::Join(", ", supported_cpu_isas()), ")");
}

// exp of a float32 CPU tensor with the vectorised exp of the current instruction set (std::exp
// for the baseline), elementwise: to test that exp against a reference.
at::Tensor cpu_exp(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat,
              "_cpu_exp: x must be a float32 CPU tensor, got ", x.scalar_type(), " on ",
              x.device());
  const at::Tensor in = x.contiguous();
  at::Tensor out = at::empty_like(in);
  simd::exp_floats(simd::cpu_isa(), in.const_data_ptr<float>(), in.numel(),
                   out.mutable_data_ptr<float>());
  return out;
}

}  // namespace
}  // namespace drdet

TORCH_LIBRARY_FRAGMENT(drdet, m) {
  m.def("cpu_isa() -> str", &drdet::cpu_isa);
  m.def("set_cpu_isa(str isa) -> ()", &drdet::set_cpu_isa);
  m.def("supported_cpu_isas() -> str[]", &drdet::supported_cpu_isas);
  m.def("_cpu_exp(Tensor x) -> Tensor", &drdet::cpu_exp);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "drdet C++/CUDA ops; call them through drdet.layers";
  m.def("built_with_cuda", &drdet::built_with_cuda,
        "Whether the CUDA kernels were compiled into this build");
}
