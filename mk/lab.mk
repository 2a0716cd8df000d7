# The lab (scripts/lab.py): LAB_HOSTS simulated GPU hosts on this machine, privileged
# systemd containers with sshd on 127.0.0.1:<2200+i>, each with a loop-backed dataset
# volume holding a small ImageNet-shaped cache; then site.yml and the cache test runbook
# against inventory/lab, exactly as against a real fleet. Included by the Makefile.
LAB_HOSTS ?= 3
LAB_SITE ?= site.yml
LAB_CACHE_TEST ?= playbooks/cache-test.yml
# The cache on the volumes is built by the production libraries (hf_loader.fixtures).
LAB_PYTHON ?= $(if $(wildcard .venvs/prod/bin/python),.venvs/prod/bin/python,$(LOADER_BIN)/python)
LAB_PYTHON_DEP := $(if $(wildcard .venvs/prod/bin/python),,loader-venv)
# LAB_SEED=empty: blank volumes (same size and label), filled by playbooks/seed.yml from the
# controller's copy of the cache (lab/cache/content) between site.yml and the cache test.
LAB_SEED ?= full
LAB_SEED_PLAYBOOK ?= playbooks/seed.yml
LAB_SEED_SOURCE ?= $(CURDIR)/$(or $(LAB_DIR),lab)/cache/content
# The manifest and seed key of that cache live beside it (removed with it by lab-down).
LAB_SEED_CONTROLLER_DIR ?= $(CURDIR)/$(or $(LAB_DIR),lab)/cache/seed
LAB_SEED_ARGS ?=
# LAB_GPU=sim: each host gets LAB_GPU_COUNT simulated NVIDIA GPUs and the lab a simulated
# NVIDIA repository, so that the driver role installs, reboots and verifies there;
# LAB_GPU_FAIL=HOST[,HOST]: one GPU fails there under the newest simulated driver
# (docs/lab.md "Simulated GPUs and reboots"). LAB_GPU_DRIVER_VERSIONS is read from the
# environment (default "580.82.07 580.95.05").
LAB_GPU ?= none
LAB_GPU_COUNT ?= 2
LAB_GPU_FAIL ?=
BENCH_SEED_ARGS ?=
BENCH_FLEET_HOSTS ?= 10
BENCH_FLEET_REPS ?= 3
BENCH_FLEET_ARGS ?=

.PHONY: lab lab-up lab-down lab-status bench-fleet bench-seed ara-lab-test

lab-up: venv $(LAB_PYTHON_DEP) ## lab hosts only (engine, containers, volumes, inventory/lab/hosts.yml)
	LAB_PYTHON=$(LAB_PYTHON) $(PYTHON) scripts/lab.py up --hosts $(LAB_HOSTS) --seed $(LAB_SEED) \
		--gpu $(LAB_GPU) --gpu-count $(LAB_GPU_COUNT) --gpu-fail '$(LAB_GPU_FAIL)'

# ARA=1: every run below is recorded by ARA into ARA_DIR (mk/ara.mk sets ANSIBLE_PLAYBOOK);
# make ara-ui shows them.
lab: lab-up wheelhouse $(if $(filter 1 yes true,$(ARA)),ara-venv) ## LAB_HOSTS (3) simulated GPU hosts, site.yml + cache test over SSH, fleet report (ARA=1: recorded)
ifeq ($(LAB_SEED),empty)
	$(ANSIBLE_PLAYBOOK) -i inventory/lab $(LAB_SITE) -e hf_loader_cache_test_on_change=false
	$(ANSIBLE_PLAYBOOK) -i inventory/lab $(LAB_SEED_PLAYBOOK) -e hf_seed_source_dir=$(LAB_SEED_SOURCE) \
		-e hf_seed_controller_python=$(abspath $(LAB_PYTHON)) -e hf_seed_controller_dir=$(LAB_SEED_CONTROLLER_DIR) \
		$(LAB_SEED_ARGS)
else
	$(ANSIBLE_PLAYBOOK) -i inventory/lab $(LAB_SITE)
endif
	$(ANSIBLE_PLAYBOOK) -i inventory/lab $(LAB_CACHE_TEST)
	@echo "[lab] fleet report: $(CURDIR)/reports/fleet.html (Markdown: reports/fleet.md)"
	@$(if $(filter 1 yes true,$(ARA)),echo "[lab] run records (ARA): $(ARA_DATABASE); see them: make ara-ui")
	@echo "[lab] log in: ssh -i lab/ssh/id_ed25519 -p 2201 ansible@127.0.0.1; remove: make lab-down"

# Slow (a lab of its own converged for real, ARA's server, a real browser): not in make test.
ara-lab-test: $(ARA_STAMP) test-tools $(LAB_PYTHON_DEP) ## a real site.yml converge of 2 lab hosts recorded by ARA, every host's tasks found in headless chromium (about 10 min)
	LAB_PYTHON=$(LAB_PYTHON) PYTHONPATH=$(CURDIR)/scripts ARA_BIN=$(CURDIR)/$(ARA_BIN) $(ARA_BIN)/pytest -q -rs \
		--durations=5 -p no:cacheprovider -p pytest_skip_policy tests/ara_lab_browser.py

lab-down: ## remove every lab container, loop device, volume image and file (lab/state.json)
	$(PYTHON) scripts/lab.py down

lab-status: ## the lab hosts recorded in lab/state.json and whether they run
	$(PYTHON) scripts/lab.py status

bench-fleet: venv $(LAB_PYTHON_DEP) ## no-change rerun of site.yml on 10 lab hosts: defaults vs project settings (ansible-core, mitogen), the goals
	LAB_PYTHON=$(LAB_PYTHON) $(BIN)/python bench/fleet_rerun.py --hosts $(BENCH_FLEET_HOSTS) \
		--reps $(BENCH_FLEET_REPS) $(BENCH_FLEET_ARGS)

bench-seed: venv $(LAB_PYTHON_DEP) ## seed.yml on 1, 2, 4, 8 empty lab hosts: one source vs fan-out (issue 14)
	LAB_PYTHON=$(LAB_PYTHON) $(BIN)/python bench/seed_fanout.py $(BENCH_SEED_ARGS)
