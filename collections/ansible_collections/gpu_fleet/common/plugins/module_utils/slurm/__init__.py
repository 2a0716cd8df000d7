"""The Slurm roles' decisions (slurm_node, slurm_controller, and training as a Slurm job), as pure
functions, one concern per module:

- versions: which slurmd may report to which slurmctld, and what `apt-cache policy` shows;
- node_conf: a node's NodeName= line for slurm.conf and its gres.conf lines, from its facts;
- job: the training launcher's choice, a batch job's settings checked, and its sbatch options.

plugins/filter/slurm.py, slurm_job.py and train.py map the slurm_*, slurm_job_* and train_*
filters to these functions. Nothing here touches a host or imports Ansible.
"""
