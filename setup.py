"""Build drdet and its extension ``drdet._C``.

CPU kernels are always built. CUDA kernels are built when nvcc is found (``CUDA_HOME``, or
``/usr/local/cuda``, or ``nvcc`` on the PATH) or when ``FORCE_CUDA=1``; ``DRDET_WITH_CUDA=0``
turns them off. No GPU is needed to compile: set ``TORCH_CUDA_ARCH_LIST`` (e.g. "8.0;9.0") to
choose the architectures, otherwise torch picks them (all supported ones when no GPU is visible).

Install with ``pip install --no-build-isolation -e .`` into an environment that already has torch.
``DRDET_BUILD_EXT=0`` installs the package without compiling and without importing torch (so
``DRDET_BUILD_EXT=0 pip install .`` works in pip's isolated build environment and on machines
without a compiler): drdet then runs the pure-PyTorch forms of its ops (drdet/layers/_ext.py).
The Makefile uses it and then compiles with ``setup.py build_ext --inplace``, which rebuilds
incrementally (pip's editable build starts from an empty folder every time).
"""

import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _find_cuda_home():
    """Where the CUDA toolkit is: CUDA_HOME/CUDA_PATH, /usr/local/cuda, or the nvcc on the PATH.

    torch's own guess follows the nvcc symlink to /usr/local on some machines, which has no
    CUDA headers, so we look ourselves and set CUDA_HOME before torch reads it.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return home
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    nvcc = shutil.which("nvcc")
    if nvcc:
        home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
            return home
    return None


def _pip_cuda_include_dirs():
    """CUDA headers shipped in pip packages (``site-packages/nvidia/cu13/include`` and the
    per-library ``nvidia/<lib>/include`` folders of older wheels). torch's headers include
    cusparse.h, cublas_v2.h, ... which a bare toolkit folder may lack."""
    dirs = []
    try:
        import nvidia  # namespace package installed with the CUDA build of torch
    except ImportError:
        return dirs
    for base in list(getattr(nvidia, "__path__", [])):
        dirs += sorted(glob.glob(os.path.join(base, "cu*", "include")))
        dirs += sorted(glob.glob(os.path.join(base, "*", "include")))
    seen, out = set(), []
    for d in dirs:
        if os.path.isdir(d) and d not in seen:
            seen.add(d)
            out.append(d)
    return out


def _want_cuda(cuda_home):
    flag = os.environ.get("DRDET_WITH_CUDA")
    if flag is not None and flag.strip() in ("0", "false", "False", "OFF", "off"):
        return False
    if os.environ.get("FORCE_CUDA", "0") == "1":
        if cuda_home is None:
            sys.exit("FORCE_CUDA=1 but no CUDA toolkit (nvcc) was found; set CUDA_HOME.")
        return True
    return cuda_home is not None


def _build_ext():
    return os.environ.get("DRDET_BUILD_EXT", "1").strip() != "0"


def get_extensions():
    if not _build_ext():
        return []
    cuda_home = _find_cuda_home()
    with_cuda = _want_cuda(cuda_home)
    if with_cuda:
        os.environ["CUDA_HOME"] = cuda_home  # before torch.utils.cpp_extension reads it
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    csrc = os.path.join(ROOT, "csrc")
    sources = sorted(glob.glob(os.path.join(csrc, "*.cpp")))
    sources += sorted(glob.glob(os.path.join(csrc, "cpu", "*.cpp")))
    extra_compile_args = {"cxx": ["-O3"]}  # torch adds the C++ standard it needs (C++20)
    define_macros = []
    include_dirs = [csrc]
    extension = CppExtension
    if with_cuda:
        extension = CUDAExtension
        sources += sorted(glob.glob(os.path.join(csrc, "cuda", "*.cu")))
        define_macros.append(("WITH_CUDA", None))
        include_dirs += _pip_cuda_include_dirs()
        extra_compile_args["nvcc"] = [
            "-O3",
            "--expt-relaxed-constexpr",
            "-D__CUDA_NO_HALF_OPERATORS__",
            "-D__CUDA_NO_HALF_CONVERSIONS__",
            "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
            "-D__CUDA_NO_HALF2_OPERATORS__",
        ]
    sources = [os.path.relpath(s, ROOT) for s in sources]
    print(
        f"drdet: building drdet._C with{'' if with_cuda else 'out'} CUDA"
        + (
            f" (CUDA_HOME={cuda_home}, TORCH_CUDA_ARCH_LIST="
            f"{os.environ.get('TORCH_CUDA_ARCH_LIST', '<torch default>')})"
            if with_cuda
            else ""
        )
    )
    return [
        extension(
            "drdet._C",
            sources,
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
        )
    ]


def _cmdclass():
    if not _build_ext():
        return {}
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


setup(
    name="drdet",
    version="0.1.0",
    description="RetinaNet with the Distributional Ranking (DR) loss (Qian et al., CVPR 2020)",
    packages=find_packages(exclude=("tests", "tools", "configs", "datasets")),
    python_requires=">=3.11",
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
    ],
    install_requires=[
        "yacs>=0.1.8",
        "pyyaml",
        "numpy",
        "pycocotools>=2.0",
        "opencv-python-headless",
        "pillow",
        "tqdm",
        "matplotlib",
    ],
    ext_modules=get_extensions(),
    cmdclass=_cmdclass(),
    zip_safe=False,
)
