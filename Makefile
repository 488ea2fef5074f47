# edgetrain: `make demo` and `make test` do everything on a fresh machine:
# install the Debian packages that are missing, make .venv with the Python
# packages, build the C extension in place, then run.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# The first python3 on PATH (pyenv's 3.11 here) makes the venv; torch==2.13.0
# is the CPU wheel for Python 3.11.
BASE_PYTHON ?= python3
APT_PACKAGES := python3-dev libopenblas-dev libdnnl-dev dataset-fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Tests use every core we have; benchmarks pin their own thread counts.
PYTEST_ARGS ?=

.PHONY: build deps apt venv ext test demo bench stress accuracy clean

build: apt venv ext

# Idempotent: installs only the packages dpkg does not report as installed.
apt:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

# The stamp is newer than pyproject.toml once its dependencies are installed.
venv: $(VENV)/.deps-stamp

$(VENV)/.deps-stamp: pyproject.toml
	@[ -x $(PY) ] || $(BASE_PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q "numpy>=1.23" tqdm pytest "torch==2.13.0" matplotlib \
	  onnx onnxruntime nbclient nbformat ipykernel hypothesis
	@touch $@

# The extension is built in place; the venv gets a .pth naming this checkout
# (as an editable install would) and the `edgetrain` console script of
# pyproject's [project.scripts], so `.venv/bin/edgetrain` runs from anywhere.
ext: venv
	$(PY) setup.py -q build_ext --inplace
	@echo "$(CURDIR)" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/edgetrain-checkout.pth"
	@printf '#!%s\nimport sys\nfrom edgetrain.cli import main\nsys.exit(main())\n' "$(CURDIR)/$(PY)" > $(VENV)/bin/edgetrain
	@chmod +x $(VENV)/bin/edgetrain

test: build
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The edge scenario: a PyTorch model from Fashion-MNIST fine-tuned in int8 on the
# MNIST digits with `edgetrain train --init --train-only`, beside PyTorch (~1-2 min).
demo: build
	$(PY) -m edgetrain.demo

# Issue 5's grids on a quiet machine (~45 min): the training step (5 models x
# backends x precisions vs PyTorch eager / channels-last) and inference (batch
# 1..256 vs PyTorch and ONNX Runtime); results in benchmarks/results/.
bench: build
	$(PY) benchmarks/bench_train_step.py --profile
	$(PY) benchmarks/bench_inference.py

# Issue 6's long checks (~12 min): 100 random SIGKILLs with --resume, and
# 20,000 lenet int8 steps with flat RSS; records in benchmarks/results/stress/.
stress: build
	$(PY) stress/run_all.py

# Accuracy table of issue 3 (hours for the full ResNet-18 runs; resumable).
accuracy: build
	$(PY) benchmarks/accuracy_table.py

clean:
	rm -rf build edgetrain/*.so
