"""The lab's simulated NVIDIA GPUs and driver (scripts/lab.py --gpu sim; docs/lab.md "Simulated GPUs and reboots").

elf      a minimal kernel module file (ELF64 relocatable with a .modinfo section)
aptrepo  Packages and Release of a flat apt repository, .deb building and signing
build    the simulated NVIDIA repository (NVIDIA's layout and package names) and the
         stand-in kernel headers package
payload/ what goes into the lab containers: lab-boot (every lab host), lab-train@
         (every lab host), and the packages' programs (nvidia-smi, nvidia-persistenced,
         the DKMS stand-in's maintainer scripts)

Python 3.11 standard library only: scripts/lab.py runs with the machine's python3.
"""
