# hf_loader (files/hf_loader): offline-first dataset loader, hf-cache-test, hf-train, bench.
# Included by the top-level Makefile. One venv with the production pins (composer 0.32.1,
# torch 2.7.0): the Composer smoke test runs against exactly what GPU hosts install.
PYTHON ?= python3
LOADER_DIR := files/hf_loader
LOADER_VENV := .venvs/loader
LOADER_BIN := $(LOADER_VENV)/bin
LOADER_LOCK := requirements/loader-prod.txt
LOADER_BENCH_LOCK := requirements/loader-bench.txt
LOADER_TEST_LOCK := requirements/loader-test.txt
# Reinstall only when the lock or the package metadata changed.
LOADER_STAMP := $(LOADER_VENV)/.installed-$(shell cat $(LOADER_LOCK) $(LOADER_DIR)/pyproject.toml 2>/dev/null | sha256sum | cut -c1-12)
LOADER_BENCH_STAMP := $(LOADER_VENV)/.bench-$(shell cat $(LOADER_BENCH_LOCK) 2>/dev/null | sha256sum | cut -c1-12)
LOADER_TEST_STAMP := $(LOADER_VENV)/.test-$(shell cat $(LOADER_TEST_LOCK) 2>/dev/null | sha256sum | cut -c1-12)
LOADER_RUFF := $(if $(wildcard .venvs/controller/bin/ruff),.venvs/controller/bin/ruff,$(LOADER_BIN)/ruff)
LOADER_RUFF_DEP := $(if $(wildcard .venvs/controller/bin/ruff),,$(LOADER_STAMP))
LOADER_BENCH_ARGS ?=
TRAIN_BENCH_ARGS ?=

.PHONY: loader-venv loader-test-venv loader-lint loader-test loader-bench train-bench lock-hashes

loader-venv: $(LOADER_STAMP) ## hf_loader venv (.venvs/loader) from requirements/loader-prod.txt

# The lock as hosts install it: every wheel checked against the lock's sha256. The
# project's own package is built from this checkout, so it has no hash to check: a
# second pip call, which leaves hash checking off for it alone.
$(LOADER_STAMP): $(LOADER_LOCK) $(LOADER_DIR)/pyproject.toml
	rm -rf $(LOADER_VENV)
	$(PYTHON) -m venv $(LOADER_VENV)
	$(LOADER_BIN)/pip install --quiet --no-deps --require-hashes --only-binary :all: -r $(LOADER_LOCK)
	$(LOADER_BIN)/pip install --quiet --no-deps --no-build-isolation -e $(LOADER_DIR)
	$(LOADER_BIN)/pip check
	touch $@

# The locks hosts install from carry a sha256 for each wheel (Python 3.11 and 3.13): rerun
# after changing a pin. loader-test.txt and loader-bench.txt are CI's, never a host's: plain.
lock-hashes: venv ## write the wheels' sha256 onto requirements/pull.txt and loader-prod.txt
	$(BIN)/python scripts/hash-lock.py requirements/pull.txt $(LOADER_LOCK)

loader-lint: $(LOADER_RUFF_DEP) ## ruff check + format check of files/hf_loader and bench/
	$(LOADER_RUFF) check $(LOADER_DIR) bench
	$(LOADER_RUFF) format --check $(LOADER_DIR) bench

$(LOADER_TEST_STAMP): $(LOADER_TEST_LOCK) $(LOADER_STAMP)
	$(LOADER_BIN)/pip install --quiet --no-deps -r $(LOADER_TEST_LOCK)
	$(LOADER_BIN)/pip check
	touch $@

loader-test-venv: $(LOADER_TEST_STAMP) ## the loader venv with the test tools (requirements/loader-test.txt)

# Two pytest processes share the files as `make pytest`'s do (PYTEST_PROCESSES, scripts/pytest-shared.sh):
# beside make pytest in make test, one process ran alone for its last 100 s with a core idle. Torch
# computes on LOADER_TEST_THREADS threads (OMP_NUM_THREADS; empty: torch's default, one a core): with
# four processes on the cores, its threads waited for each other at every step (bench/unit_stage.py).
LOADER_TEST_THREADS ?= 1
loader-test: $(LOADER_TEST_STAMP) test-tools ## hf_loader tests incl. the Composer ResNet-50 smoke (production pins)
	cd $(LOADER_DIR) && $(if $(LOADER_TEST_THREADS),OMP_NUM_THREADS=$(LOADER_TEST_THREADS)) \
		PYTHONPATH=$(CURDIR)/scripts bash $(CURDIR)/scripts/pytest-shared.sh \
		$(CURDIR)/$(LOADER_BIN)/python -m pytest -q -rs --durations=15 -p no:cacheprovider -p pytest_skip_policy tests

$(LOADER_BENCH_STAMP): $(LOADER_BENCH_LOCK) $(LOADER_STAMP)
	$(LOADER_BIN)/pip install --quiet --no-deps -r $(LOADER_BENCH_LOCK)
	$(LOADER_BIN)/pip check
	touch $@

loader-bench: $(LOADER_BENCH_STAMP) ## loader benchmark: images/s vs baseline, first batch, check time
	$(LOADER_BIN)/python bench/loader_bench.py $(LOADER_BENCH_ARGS)

train-bench: $(LOADER_BENCH_STAMP) ## training images/s per device lever on a GPU ("no GPU" otherwise)
	$(LOADER_BIN)/python bench/train_bench.py $(TRAIN_BENCH_ARGS)
