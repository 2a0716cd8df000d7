# The fleet's lab hosts as a Slurm cluster (scripts/slurm_lab.py, playbooks/slurm.yml). Included by
# the Makefile; not part of `make test`.
SLURM_LAB_ARGS ?=

.PHONY: lab-slurm

lab-slurm: venv $(LAB_PYTHON_DEP) ## Slurm on lab hosts: a controller and 2 nodes, sinfo idle, srun, the health check drains a broken cache and resumes it
	LAB_PYTHON=$(LAB_PYTHON) $(BIN)/python scripts/slurm_lab.py $(SLURM_LAB_ARGS)
