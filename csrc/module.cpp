// The Python module drdet._C. Importing it runs the static registrations of every op
// (TORCH_LIBRARY_FRAGMENT / TORCH_LIBRARY_IMPL in csrc/*.cpp, csrc/cpu, csrc/cuda), after
// which the ops are reachable as torch.ops.drdet.<name>.
#include <torch/extension.h>

#include "macros.h"

namespace drdet {

bool built_with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace drdet

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "drdet C++/CUDA ops; call them through drdet.layers";
  m.def("built_with_cuda", &drdet::built_with_cuda,
        "Whether the CUDA kernels were compiled into this build");
}
