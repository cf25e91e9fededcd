# drdet: `make test` and `make demo` set up everything on a fresh machine.
#   make install   virtual environment (.venv, reused), torch, requirements, drdet with its extension
#   make test      install, then the pytest suite (CPU; CUDA tests skip themselves without a GPU)
#   make test-gpu  install, then only the CUDA tests and the op benchmarks (on a GPU machine)
#   make bench     the op benchmarks (tools/benchmark_ops.py)
#   make demo      install, make the synthetic dataset, train, evaluate, print the AP
# Variables: PYTHON (interpreter that makes the venv), VENV, TORCH_SPEC, TORCH_CUDA_ARCH_LIST,
# FORCE_CUDA (1: build the CUDA kernels even where no GPU is visible), MAX_JOBS.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

export TORCH_CUDA_ARCH_LIST ?= 8.0;9.0
export FORCE_CUDA ?= $(shell test -x /usr/local/cuda/bin/nvcc -o -n "$$CUDA_HOME" && echo 1 || echo 0)
export MAX_JOBS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: venv install build test test-gpu bench demo clean

# --system-site-packages: on machines that carry their own torch (GPU machines) the venv uses it.
$(PY):
	$(PYTHON) -m venv --system-site-packages $(VENV)

venv: $(PY)

install: $(PY)
	@$(PY) -c "import torch, torchvision" 2>/dev/null || $(PIP) install $(TORCH_SPEC)
	$(PIP) install --upgrade "pip>=24"
	$(PIP) install -r requirements.txt -r requirements-dev.txt
	DRDET_BUILD_EXT=0 $(PIP) install --no-build-isolation --no-deps -e .
	$(MAKE) build

# Incremental (ninja keeps its state in ./build): only changed sources are recompiled.
build: $(PY)
	$(PY) setup.py build_ext --inplace
	@cd / && $(abspath $(PY)) -c "import drdet._C as C; print('drdet._C:', C.__file__, '| CUDA kernels:', C.built_with_cuda())"

test: install
	$(PY) -m pytest tests -ra

test-gpu: install
	@$(PY) -c "import torch; assert torch.cuda.is_available(), 'make test-gpu needs a visible GPU'"
	$(PY) -m pytest tests -ra -m cuda
	$(PY) tools/benchmark_ops.py --device cuda

bench: install
	$(PY) tools/benchmark_ops.py

# Trains Dr. Retina (ResNet-18-FPN, GroupNorm, from scratch) on the built-in synthetic set
# (generated on first use under $$DRDET_DATASETS, default ./datasets) and prints its COCO AP.
DEMO_CONFIG ?= configs/synthetic/dr_R-18-FPN_synthetic.yaml
DEMO_OUTPUT ?= output/demo
demo: install
	$(PY) tools/train_net.py --config-file $(DEMO_CONFIG) OUTPUT_DIR $(DEMO_OUTPUT)

clean:
	rm -rf build drdet/_C*.so *.egg-info
