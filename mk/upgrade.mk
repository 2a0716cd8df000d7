# The rolling driver upgrade rehearsed on lab hosts with a simulated GPU driver and real
# reboots (scripts/upgrade_rehearsal.py, playbooks/upgrade-driver.yml), and under a real
# 2-host Composer job (scripts/upgrade_job_rehearsal.py). Included by the Makefile.
UPGRADE_REHEARSAL_ARGS ?=
UPGRADE_JOB_REHEARSAL_ARGS ?=

.PHONY: lab-upgrade lab-upgrade-short lab-upgrade-job

lab-upgrade: venv $(LAB_PYTHON_DEP) wheelhouse ## rehearse upgrade-driver.yml: 6 sim-GPU lab hosts, canary + batches of 2, one fails; nvidia_driver's GPU tags alone; then lab-upgrade-job
	LAB_PYTHON=$(LAB_PYTHON) $(BIN)/python scripts/upgrade_rehearsal.py --hosts 6 --serial 2 --fail 4 --gpu-tags $(UPGRADE_REHEARSAL_ARGS)
	LAB_PYTHON=$(LAB_PYTHON) $(BIN)/python scripts/upgrade_job_rehearsal.py $(UPGRADE_JOB_REHEARSAL_ARGS)

lab-upgrade-short: venv $(LAB_PYTHON_DEP) ## the rehearsal's short version (in make test): 2 hosts, a batch each, the 2nd fails; the GPU tags alone
	LAB_PYTHON=$(LAB_PYTHON) $(BIN)/python scripts/upgrade_rehearsal.py --hosts 2 --serial 1 --fail 2 --gpu-tags $(UPGRADE_REHEARSAL_ARGS)

lab-upgrade-job: venv $(LAB_PYTHON_DEP) wheelhouse ## the rollout under a real 2-host Composer job (CPU, gloo, autoresume): drained whole, checkpointed, resumed; then one host fails
	LAB_PYTHON=$(LAB_PYTHON) $(BIN)/python scripts/upgrade_job_rehearsal.py $(UPGRADE_JOB_REHEARSAL_ARGS)
