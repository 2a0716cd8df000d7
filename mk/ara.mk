# Run records with ARA (docs/operator.md "Run records (ARA)"): opt in with ARA=1 (make lab
# ARA=1) or the environment `make -s ara-env` prints. ARA's callback runs inside
# ansible-playbook's own Python, so the recording toolchain is a venv of its own: the
# controller lock plus requirements/ara.txt (hash-checked). Operators who do not opt in
# install nothing more. Included by the Makefile.
ARA_VENV := .venvs/ara
ARA_BIN := $(ARA_VENV)/bin
ARA_LOCK := requirements/ara.txt
ARA_STAMP := $(ARA_VENV)/.installed-$(shell cat requirements/controller.txt $(ARA_LOCK) 2>/dev/null | sha256sum | cut -c1-12)
# Where the records live: ARA's settings.yaml and its SQLite database.
ARA_DIR ?= $(CURDIR)/.cache/ara
ARA_DATABASE ?= $(ARA_DIR)/ansible.sqlite
# The embedded server listens on this machine only (ara-manage runserver, Django's
# development server): reach it from elsewhere through an SSH tunnel.
ARA_PORT ?= 8765
ARA ?=
# What a recorded ansible-playbook run gets in its environment: ARA's callback path (known
# only once the venv exists, so the shell asks it at run time) and the records' place.
ARA_ENV = ANSIBLE_CALLBACK_PLUGINS="$${ANSIBLE_CALLBACK_PLUGINS:+$$ANSIBLE_CALLBACK_PLUGINS:}$$($(ARA_BIN)/python -m ara.setup.callback_plugins)" \
	ARA_BASE_DIR="$(ARA_DIR)" ARA_DATABASE_NAME="$(ARA_DATABASE)"
# The ansible-playbook the lab runs: the controller's, or ARA's with ARA=1.
ARA_ON := $(filter 1 yes true,$(ARA))
ANSIBLE_PLAYBOOK = $(if $(ARA_ON),$(ARA_ENV) $(ARA_BIN)/ansible-playbook,$(BIN)/ansible-playbook)
ARA_DEP := $(if $(ARA_ON),$(ARA_STAMP))

.PHONY: ara-venv ara-env ara-ui ara-test ara-lock

ara-venv: $(ARA_STAMP) ## ARA's recording toolchain in .venvs/ara: the controller lock + requirements/ara.txt

$(ARA_STAMP): requirements/controller.txt $(ARA_LOCK)
	$(call tool_venv,$(ARA_VENV),$(ARA_LOCK))

ara-env: $(ARA_STAMP) ## print the exports that make a shell's ansible-playbook runs record into ARA_DIR
	@echo "export PATH=$(CURDIR)/$(ARA_BIN):\$$PATH"
	@echo "export ANSIBLE_CALLBACK_PLUGINS=\$${ANSIBLE_CALLBACK_PLUGINS:+\$$ANSIBLE_CALLBACK_PLUGINS:}$$($(ARA_BIN)/python -m ara.setup.callback_plugins)"
	@echo "export ARA_BASE_DIR=$(ARA_DIR)"
	@echo "export ARA_DATABASE_NAME=$(ARA_DATABASE)"

ara-ui: $(ARA_STAMP) ## serve the recorded runs (ARA_DIR) on http://127.0.0.1:$(ARA_PORT)/ until Ctrl-C
	@test -f "$(ARA_DATABASE)" || { echo "[ara] no records in $(ARA_DATABASE): record a run first (make lab ARA=1)" >&2; exit 2; }
	@echo "[ara] run records: http://127.0.0.1:$(ARA_PORT)/ (database $(ARA_DATABASE)); Ctrl-C stops the server"
	ARA_BASE_DIR="$(ARA_DIR)" ARA_DATABASE_NAME="$(ARA_DATABASE)" $(ARA_BIN)/ara-manage runserver --noreload 127.0.0.1:$(ARA_PORT)

# Slow (a real site.yml run recorded, a real server, a real browser): not in make pytest.
ara-test: $(ARA_STAMP) test-tools ## record a real site.yml run with ARA and find every host's tasks in headless chromium
	PYTHONPATH=$(CURDIR)/scripts ARA_BIN=$(CURDIR)/$(ARA_BIN) $(ARA_BIN)/pytest -q -rs --durations=5 \
		-p no:cacheprovider -p pytest_skip_policy tests/ara_browser.py

ara-lock: venv ## re-resolve requirements/ara.in over the controller lock into requirements/ara.txt (hashed)
	$(call tool_lock,ARA,requirements/ara.in,$(ARA_LOCK),ara)
