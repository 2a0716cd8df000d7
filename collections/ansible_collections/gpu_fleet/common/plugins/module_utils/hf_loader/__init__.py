"""The hf_loader role's decisions, as pure functions, one concern per module:

- pins: which pins of the loader's lock a virtual environment lacks, as pip decides;
- wheelhouse: whether a host's wheelhouse is in step with the controller's;
- checkpoints: where the training job writes its checkpoints, and why a save_folder is refused;
- interpreter: which Python the loader's venv is made with, and the packages that bring it.

plugins/filter/hf_loader.py maps the hf_loader_* filters to these functions; the health gate's
reading of its checks is in module_utils/health_gate.
"""
