"""The health gate before service (roles/hf_loader/tasks/health_gate.yml): what each check's
output means, and the verdict.

Three checks, each reading what a command printed on the host:
- cuda: `python -m hf_loader.gpu_check` (files/hf_loader/src/hf_loader/gpu_check.py), its JSON
  report and exit code (the lab's stand-in, scripts/gpu_sim/payload/gpu_check.py, prints the same);
- dcgm: `dcgmi diag -r LEVEL` where DCGM is installed, its table and exit code;
- fabric: on NVSwitch and NVLink 5 hosts, `systemctl is-active nvidia-fabricmanager` and the
  Fabric section of each GPU in `nvidia-smi -q`.

settings checks the gate's variables; problems holds the problem record and the verdict. Output
that cannot be read is a problem too: the gate never passes on something it did not understand.
plugins/filter/health_gate.py maps the filters to these functions.
"""
