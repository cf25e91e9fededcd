# drdet: `make test` and `make demo` set up everything on a fresh machine.
#   make install   virtual environment (.venv, reused), torch, requirements, drdet with its extension
#   make test      install, then the pytest suite (CPU; CUDA tests skip themselves without a GPU)
#   make test-fast install, then the suite without the tests marked slow (the edit-test loop)
#   make lint      ruff (lint and format check) and mypy on drdet/ (CI runs it with make test)
#   make test-gpu  install, then only the CUDA tests and the op benchmarks (on a GPU machine;
#                  offline works when torch and the requirements are importable: pip is not
#                  called for what is there, and the kernels are built for the visible card only)
#   make bench     the op benchmarks (tools/benchmark_ops.py)
#   make demo      install, make the synthetic dataset, train, evaluate, print the AP
#   make compare   install, then DR vs focal loss on the synthetic set (tools/compare_losses.py):
#                  both trained and evaluated, report in $(COMPARE_OUTPUT)/report.md
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

.PHONY: venv deps install build test test-fast lint test-gpu bench demo compare clean

# --system-site-packages: on machines that carry their own torch (GPU machines) the venv uses it.
$(PY):
	$(PYTHON) -m venv --system-site-packages $(VENV)

venv: $(PY)

# pip runs only for what is missing, so that offline GPU machines that carry torch and the
# requirements need no registry. The import names of requirements*.txt, in their order:
IMPORTS := yacs yaml numpy pycocotools hotcoco orjson cv2 PIL tqdm matplotlib onnx onnxscript onnxruntime pytest ninja setuptools wheel ruff mypy
deps: $(PY)
	@$(PY) -c "import torch, torchvision" 2>/dev/null || $(PIP) install $(TORCH_SPEC)
	@$(PY) -c "import $(shell echo $(IMPORTS) | tr ' ' ',')" 2>/dev/null || \
		{ $(PIP) install --upgrade "pip>=24" && $(PIP) install -r requirements.txt -r requirements-dev.txt; }

install: deps
	@(cd / && $(abspath $(PY)) -c "import sys, drdet; sys.exit(drdet.__file__ != '$(CURDIR)/drdet/__init__.py')") 2>/dev/null || \
		DRDET_BUILD_EXT=0 $(PIP) install --no-build-isolation --no-deps -e .
	$(MAKE) build

# Incremental (ninja keeps its state in ./build): only changed sources are recompiled.
build: $(PY)
	$(PY) setup.py build_ext --inplace
	@(cd / && $(abspath $(PY)) -c "import drdet._C as C; print('drdet._C:', C.__file__, '| CUDA kernels:', C.built_with_cuda())")

test: install
	$(PY) -m pytest tests -ra

test-fast: install
	$(PY) -m pytest tests -ra -m "not slow"

lint: deps
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# The visible card's architecture (e.g. 9.0), so that the build compiles for it alone.
GPU_ARCH = $(shell $(PY) -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null)
test-gpu: $(PY)
	@$(PY) -c "import torch; assert torch.cuda.is_available(), 'make test-gpu needs a visible GPU'"
	$(MAKE) install TORCH_CUDA_ARCH_LIST="$(GPU_ARCH)" FORCE_CUDA=1
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

# DR vs focal loss on the synthetic set: the demo's model and 600-iteration schedule trained once
# with each loss (each with its own setup), both evaluated, OUTPUT/report.md written. Running it
# again resumes an interrupted comparison.
COMPARE_OUTPUT ?= output/compare
compare: install
	$(PY) tools/compare_losses.py --config-file $(DEMO_CONFIG) --output-dir $(COMPARE_OUTPUT)

clean:
	rm -rf build drdet/_C*.so *.egg-info
