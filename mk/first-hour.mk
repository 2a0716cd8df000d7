# The operator's first hour (docs/first-hour.md), measured: scripts/first_hour.py runs the
# page's console commands word for word in a fresh controller container against a lab of its
# own (lab/first-hour), then checks the fleet report and the training job; it removes the
# container and the lab even after a failure. About 15 minutes on 2 cores, so not in make test.
# Included by the Makefile.
FIRST_HOUR_HOSTS ?= 1
FIRST_HOUR_ARGS ?=

.PHONY: first-hour

# The lab's cache is built by the production libraries (as for make lab).
first-hour: venv $(if $(wildcard .venvs/prod/bin/python),,loader-venv) ## docs/first-hour.md word for word: a fresh controller container, lab hosts, site.yml, the report, train.yml
	LAB_PYTHON=$(if $(wildcard .venvs/prod/bin/python),.venvs/prod/bin/python,$(LOADER_BIN)/python) \
		$(BIN)/python scripts/first_hour.py --hosts $(FIRST_HOUR_HOSTS) $(FIRST_HOUR_ARGS)
