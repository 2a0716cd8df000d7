# Pull mode rehearsed in the lab (scripts/pull_lab.py, docs/pull.md): hosts booted by
# cloud-init's NoCloud data source provision themselves; the controller runs no play against
# them. Included by the Makefile.
PULL_LAB_ARGS ?=

.PHONY: lab-pull lab-pull-short lab-pull-down

lab-pull: venv $(LAB_PYTHON_DEP) ## pull mode: a plain and a baked cloud image boot to ready by themselves; drift, hold
	LAB_PYTHON=$(LAB_PYTHON) $(BIN)/python scripts/pull_lab.py run $(PULL_LAB_ARGS)

lab-pull-short: venv $(LAB_PYTHON_DEP) ## the pull rehearsal's short version (in make test): the plain image only
	LAB_PYTHON=$(LAB_PYTHON) $(BIN)/python scripts/pull_lab.py run --short $(PULL_LAB_ARGS)

lab-pull-down: ## remove what the pull rehearsal left (--keep)
	$(PYTHON) scripts/pull_lab.py down
