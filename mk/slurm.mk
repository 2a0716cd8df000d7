# The fleet's lab hosts as a Slurm cluster (scripts/slurm_lab.py, playbooks/slurm.yml). Included by
# the Makefile. lab-slurm-short is part of `make test` (scripts/rehearsals.sh); the others are not.
SLURM_LAB_ARGS ?=

.PHONY: lab-slurm

lab-slurm: venv $(LAB_PYTHON_DEP) ## Slurm on lab hosts: a controller and 2 nodes, sinfo idle, srun, the health check drains a broken cache and resumes it
	LAB_PYTHON=$(LAB_PYTHON) $(BIN)/python scripts/slurm_lab.py $(SLURM_LAB_ARGS)

SLURM_JOB_LAB_ARGS ?=

.PHONY: lab-slurm-job

lab-slurm-job: venv $(LAB_PYTHON_DEP) wheelhouse ## train.yml -e train_launcher=slurm on lab hosts: a real 3-node Composer job (CPU, gloo) with sbatch, SIGTERM and scontrol requeue, resumed from its checkpoint
	LAB_PYTHON=$(LAB_PYTHON) $(BIN)/python scripts/slurm_job_lab.py $(SLURM_JOB_LAB_ARGS)

.PHONY: lab-slurm-upgrade

lab-slurm-upgrade: venv $(LAB_PYTHON_DEP) ## lab-slurm with simulated GPUs, then upgrade-driver.yml through Slurm: a requeueable 2-node job requeued, the canary held and resumed, an operator's drain kept
	LAB_PYTHON=$(LAB_PYTHON) $(BIN)/python scripts/slurm_lab.py --rollout $(SLURM_LAB_ARGS)

.PHONY: lab-slurm-short

lab-slurm-short: venv $(LAB_PYTHON_DEP) ## lab-slurm-upgrade's short version (in make test): the requeued job's restart is not waited for
	LAB_PYTHON=$(LAB_PYTHON) $(BIN)/python scripts/slurm_lab.py --rollout --short $(SLURM_LAB_ARGS)

.PHONY: lab-slurm-job-upgrade

lab-slurm-job-upgrade: venv $(LAB_PYTHON_DEP) wheelhouse ## lab-slurm-job on simulated GPUs, then upgrade-driver.yml while the Composer job trains: stopped at a checkpoint through its batch shell, resumed from the next batch
	LAB_PYTHON=$(LAB_PYTHON) $(BIN)/python scripts/slurm_job_lab.py --rollout $(SLURM_JOB_LAB_ARGS)
