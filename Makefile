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
# libasan8 libubsan1 libtsan2: the gcc 12 sanitizer runtimes of `make test-asan`
# / `make test-tsan` (gcc's libgcc-12-dev pulls them in already; named so the
# dependency is explicit).
APT_PACKAGES := python3-dev libopenblas-dev libdnnl-dev dataset-fashion-mnist \
  libasan8 libubsan1 libtsan2
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Tests use every core we have; benchmarks pin their own thread counts.
PYTEST_ARGS ?=

.PHONY: build deps apt venv ext test test-asan test-tsan fuzz demo bench stress accuracy clean

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

# ---------------------------------------------------------------- sanitizers
# `make test-asan`: the C core under AddressSanitizer + UndefinedBehaviorSanitizer:
# the pytest suite, the queue stress driver, and 1,000,000 queue jobs under
# LeakSanitizer. `make test-tsan`: the queue and its threads under
# ThreadSanitizer: the stress driver and the queue / profiler / op tests.
# The steps, options and the few deselected tests (with why) are in
# tests/sanitizers/run.sh; the C drivers are in csrc/tests/.
#
# Where the sanitized extension lives: in its own tree, $(SAN_DIR)/asan/ or
# $(SAN_DIR)/tsan/ (setup.py build_ext --build-lib, objects in *-obj/), never
# in place, so edgetrain/_C*.so stays the optimised build that `make test`
# (and every other run of this checkout) imports, and `make test` neither
# builds nor waits for a sanitized one. A sanitized run puts tests/sanitizers/
# on PYTHONPATH; its sitecustomize.py makes `import edgetrain._C` load the
# file named by $$EDGETRAIN_C_SO, in pytest and in every Python subprocess of
# the tests, while the rest of edgetrain still comes from the checkout.
# Rebuilt (--force: build_ext does not see header changes) when any C source,
# header or setup.py is newer than the stamp.
SAN_DIR := build/san
SAN_CC := gcc
CSRC := $(filter-out csrc/tests/%,$(wildcard csrc/*/*.c csrc/*/*.h))
ASAN_CFLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined \
  -fno-omit-frame-pointer -g -O1
# -fno-openmp: TSan cannot see libgomp's barriers (libgomp is not built with
# TSan), so every OpenMP region would report false races; the TSan build
# compiles the kernels single-threaded and checks the threads that are
# edgetrain's own: the queue worker and the Python threads. (The -Wno-*: the
# ignored pragmas, and variables used only in their if() clauses.)
TSAN_CFLAGS := -fsanitize=thread -g -O1 -fno-openmp -Wno-unknown-pragmas -Wno-unused-variable
# The queue and what it calls: what the drivers link.
QUEUE_SRC := csrc/queue/queue.c csrc/core/status.c csrc/core/profile.c csrc/core/threads.c
QUEUE_DEPS := $(QUEUE_SRC) $(wildcard csrc/queue/*.h csrc/core/*.h)
DRIVER_CFLAGS := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Icsrc -pthread

$(SAN_DIR)/asan/.stamp: $(CSRC) setup.py | venv
	ET_CFLAGS="$(ASAN_CFLAGS)" ET_LDFLAGS="-fsanitize=address,undefined" \
	  $(PY) setup.py -q build_ext --force --parallel 2 \
	  --build-lib $(SAN_DIR)/asan --build-temp $(SAN_DIR)/asan-obj
	@touch $@

$(SAN_DIR)/tsan/.stamp: $(CSRC) setup.py | venv
	ET_CFLAGS="$(TSAN_CFLAGS)" ET_LDFLAGS="-fsanitize=thread" \
	  $(PY) setup.py -q build_ext --force --parallel 2 \
	  --build-lib $(SAN_DIR)/tsan --build-temp $(SAN_DIR)/tsan-obj
	@touch $@

$(SAN_DIR)/queue_leak: csrc/tests/queue_leak.c $(QUEUE_DEPS)
	@mkdir -p $(@D)
	$(SAN_CC) $(DRIVER_CFLAGS) $(ASAN_CFLAGS) -o $@ $< $(QUEUE_SRC)

# the same 1,000,000 jobs unsanitized, for an RSS figure without ASan's quarantine
$(SAN_DIR)/queue_leak_plain: csrc/tests/queue_leak.c $(QUEUE_DEPS)
	@mkdir -p $(@D)
	$(SAN_CC) $(DRIVER_CFLAGS) -O2 -o $@ $< $(QUEUE_SRC)

$(SAN_DIR)/queue_stress_asan: csrc/tests/queue_stress.c $(QUEUE_DEPS)
	@mkdir -p $(@D)
	$(SAN_CC) $(DRIVER_CFLAGS) $(ASAN_CFLAGS) -o $@ $< $(QUEUE_SRC)

$(SAN_DIR)/queue_stress_tsan: csrc/tests/queue_stress.c $(QUEUE_DEPS)
	@mkdir -p $(@D)
	$(SAN_CC) $(DRIVER_CFLAGS) $(TSAN_CFLAGS) -o $@ $< $(QUEUE_SRC)

# the planted bugs of the self-checks, loaded into the Python process via ctypes
$(SAN_DIR)/planted_asan.so: csrc/tests/planted_bugs.c
	@mkdir -p $(@D)
	$(SAN_CC) $(DRIVER_CFLAGS) $(ASAN_CFLAGS) -shared -fPIC -o $@ $<

$(SAN_DIR)/planted_tsan.so: csrc/tests/planted_bugs.c
	@mkdir -p $(@D)
	$(SAN_CC) $(DRIVER_CFLAGS) $(TSAN_CFLAGS) -shared -fPIC -o $@ $<

SAN_ENV = PY=$(PY) SAN_DIR=$(SAN_DIR) SAN_CC=$(SAN_CC) PYTEST_ARGS="$(PYTEST_ARGS)"

test-asan: build $(SAN_DIR)/asan/.stamp $(SAN_DIR)/queue_leak $(SAN_DIR)/queue_leak_plain \
  $(SAN_DIR)/queue_stress_asan $(SAN_DIR)/planted_asan.so
	$(SAN_ENV) tests/sanitizers/run.sh asan

test-tsan: build $(SAN_DIR)/tsan/.stamp $(SAN_DIR)/queue_stress_tsan $(SAN_DIR)/planted_tsan.so
	$(SAN_ENV) tests/sanitizers/run.sh tsan

# Property-based fuzzing (issue 6.2): fuzz/run_all.py; FUZZ_MINUTES per fuzzer
# (idx, checkpoint, ops properties, ops calls: 4 x FUZZ_MINUTES in all).
FUZZ_MINUTES ?= 10
fuzz: build
	$(PY) fuzz/run_all.py --minutes $(FUZZ_MINUTES)

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
