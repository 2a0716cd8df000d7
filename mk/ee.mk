# The execution environment (execution-environment.yml, docs/operator.md "Execution
# environment"): the image AWX, Automation Platform and ansible-navigator run the playbooks in.
# Built here with ansible-builder and Docker from a local base image (no registry is reachable);
# make ee-lab runs site.yml inside it against the lab. Included by the Makefile.
EE_VENV := .venvs/ee
EE_BIN := $(EE_VENV)/bin
EE_LOCK := requirements/ee.txt
EE_STAMP := $(EE_VENV)/.installed-$(shell cat requirements/controller.txt $(EE_LOCK) 2>/dev/null | sha256sum | cut -c1-12)
EE_IMAGE ?= local/gpu-fleet-ee:latest
EE_BASE_IMAGE := local/ee-base:bookworm
# What ansible-builder is given (wheels, collection tarballs) and writes (its build context),
# and where navigator keeps each run's artifacts (runner's job_events, the run's summaries).
EE_DIR ?= $(CURDIR)/.cache/ee
EE_LAB_HOSTS ?= 2
# ee-lab's hosts are a lab of their own (ee-gpu-NN on 127.0.0.1:2901..), never `make lab`'s,
# which its lab-down would remove. The fact cache and the hosts' summaries stay the checkout's
# (the run inside the image uses ansible.cfg's and the site's defaults; lab.py clears them there).
EE_LAB_DIR := lab/ee
EE_LAB_ENV := LAB_DIR=$(EE_LAB_DIR) LAB_PREFIX=ee-gpu- LAB_BASE_PORT=2900 LAB_INVENTORY=$(EE_LAB_DIR)/inventory/hosts.yml
EE_NAVIGATOR_ARGS ?=

.PHONY: ee-venv ee-lock ee-base ee-build ee-lab

ee-venv: $(EE_STAMP) ## ansible-builder and ansible-navigator in .venvs/ee: the controller lock + requirements/ee.txt

$(EE_STAMP): requirements/controller.txt $(EE_LOCK)
	$(call tool_venv,$(EE_VENV),$(EE_LOCK))

ee-lock: venv ## re-resolve requirements/ee.in over the controller lock into requirements/ee.txt (hashed)
	$(call tool_lock,the execution environment's tooling,requirements/ee.in,$(EE_LOCK),ee)

ee-base: engine ## the EE's local base image (Debian 12, pip, SSH client, rsync) from the engine's bookworm image
	docker build --quiet -t $(EE_BASE_IMAGE) -f ee/base.Containerfile ee

# Docker, not Podman: the engine this project installs. The collections and wheels come from
# the controller's venv and the registry pip already uses (scripts/ee_prepare.py), so the
# image build itself needs no Galaxy and no index.
ee-build: ee-venv ee-base ## build the execution environment image EE_IMAGE (local/gpu-fleet-ee:latest)
	$(BIN)/python scripts/ee_prepare.py --dest $(EE_DIR)
	@# ansible-builder adds to an existing context and never removes what left the sources.
	rm -rf $(EE_DIR)/context
	$(EE_BIN)/ansible-builder build --container-runtime docker -f execution-environment.yml \
		--context $(EE_DIR)/context -t $(EE_IMAGE) -v 2

# site.yml inside EE_IMAGE, through ansible-navigator and ansible-runner's container isolation,
# against EE_LAB_HOSTS lab hosts (2); then the lab is removed, whatever the run did. Runner
# mounts this folder at the same path and runs the container as this user (root), so the lab
# inventory's key and known_hosts paths hold inside it; host networking reaches the hosts'
# SSH ports on 127.0.0.1; the wheelhouse is mounted read-only where the loader role looks.
# Ready means: the run's own gpu_fleet_report, written into navigator's artifact folder
# (fleet_artifact_dir under runner), says every lab host is ready. Navigator keeps runner's
# artifacts only in a --rad folder that exists (else a temporary one, removed on exit).
ee-lab: ee-build wheelhouse ## build the EE, bring up EE_LAB_HOSTS (2) lab hosts, run site.yml inside the EE to ready, remove the lab
	@rm -rf $(EE_DIR)/runner && mkdir -p $(EE_DIR)/runner; status=0; \
	{ $(EE_LAB_ENV) $(MAKE) --no-print-directory lab-up LAB_HOSTS=$(EE_LAB_HOSTS) && \
	  ln -sfn $(CURDIR)/inventory/lab/group_vars $(EE_LAB_DIR)/inventory/group_vars && \
	  $(EE_BIN)/ansible-navigator run site.yml -i $(EE_LAB_DIR)/inventory \
		--execution-environment true --eei $(EE_IMAGE) --ce docker --pull-policy never --mode stdout \
		--container-options=--network=host \
		--eev $(WHEELHOUSE_DIR):$(WHEELHOUSE_DIR):ro \
		--rad $(EE_DIR)/runner --lf $(EE_DIR)/navigator.log --pae false $(EE_NAVIGATOR_ARGS) && \
	  $(BIN)/python scripts/ee_prepare.py --expect-ready $(EE_LAB_HOSTS) --runner-dir $(EE_DIR)/runner; \
	} || status=$$?; \
	rm -f $(EE_LAB_DIR)/inventory/group_vars; \
	$(EE_LAB_ENV) $(MAKE) --no-print-directory lab-down || { [ $$status != 0 ] || status=1; }; \
	rmdir $(EE_LAB_DIR)/inventory $(EE_LAB_DIR) 2>/dev/null; \
	echo "[ee-lab] $$([ $$status = 0 ] && echo passed || echo "failed ($$status)"): site.yml in $(EE_IMAGE) against $(EE_LAB_HOSTS) lab hosts"; \
	exit $$status
