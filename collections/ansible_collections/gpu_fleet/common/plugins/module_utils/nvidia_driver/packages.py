"""The package set per platform: which names to install, how to pin them, which headers DKMS needs.

A platform is the role's vars/<platform>.yml data (__nvidia_driver_platform_data); every refusal
names the variable to change.
"""

from __future__ import annotations

from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.versions import (
    pin_in_branch,
    valid_branch,
    valid_kernel,
    valid_pin,
    version_branch,
)


def fill_branch(template: str, branch, unbranched_from="") -> str:
    """Fill in the branch; from `unbranched_from` on the names carry no branch.

    NVIDIA's Ubuntu repositories rename the driver packages from 590 on by
    removing the branch (NVIDIA driver installation guide, "Recent Updates",
    "Ubuntu 590 and later packages": nvidia-dkms-580-open -> nvidia-dkms-open,
    libnvidia-compute-580 -> libnvidia-compute, ...). Ubuntu's own archive keeps
    the branch (canonical/nvidia-graphics-drivers, branch 595: nvidia-utils-595).
    """
    if unbranched_from and valid_branch(branch) and int(str(branch)) >= int(str(unbranched_from)):
        return template.replace("-{branch}", "").replace("{branch}", "")
    return template.replace("{branch}", str(branch))


def plan_errors(platform: dict, source, branch, pin, kernel_modules, build, flavour) -> list[str]:
    """Why these settings cannot be installed on this platform; [] when they can.

    Every message names the variable to change.
    """
    errors = []
    if not valid_branch(branch):
        errors.append(f"nvidia_driver_branch must be a driver branch of three digits such as '580'; got {branch!r}")
    if pin and not valid_pin(pin):
        errors.append(
            f"nvidia_driver_version must be an exact driver version such as '580.95.05' (or empty); got {pin!r}"
        )
    elif pin and valid_branch(branch) and not pin_in_branch(pin, branch):
        errors.append(
            f"nvidia_driver_version {pin} does not belong to nvidia_driver_branch {branch}: "
            f"set the branch to {version_branch(pin)} or pick a {branch}.x version"
        )
    sources = platform.get("sources", {})
    name = platform.get("name", "this platform")
    if source not in sources:
        errors.append(
            f"nvidia_driver_source {source!r} is not offered on {name}; offered: {', '.join(sorted(sources))}"
        )
        return errors
    offer = sources[source]
    branches = [str(item) for item in offer.get("branches", [])]
    if branches and valid_branch(branch) and str(branch) not in branches:
        errors.append(
            f"nvidia_driver_branch {branch} is not offered by nvidia_driver_source {source} on {name}; "
            f"offered: {', '.join(branches)}"
        )
    # NVIDIA's repositories stop building proprietary modules at 620 (driver installation guide 620,
    # "Recent Updates", "Proprietary Kernel Modules Removed"; its "Kernel Modules" page lists only
    # the open ones, where 610's still lists both flavours): the dnf stream 620-dkms and apt's
    # proprietary packages of 620 do not exist, and a pin would fail only at the install.
    removed_at = offer.get("proprietary_before")
    if kernel_modules == "proprietary" and removed_at and valid_branch(branch) and int(str(branch)) >= int(removed_at):
        errors.append(
            f"nvidia_driver_kernel_modules proprietary is not offered by nvidia_driver_source {source} on {name} "
            f"from branch {removed_at} on (NVIDIA removed the proprietary modules there); got nvidia_driver_branch "
            f"{branch}. Set nvidia_driver_kernel_modules: open (Turing and newer), or an nvidia_driver_branch before "
            f"{removed_at} for GPUs older than Turing"
        )
    modules = offer.get("packages", {}).get(kernel_modules)
    if modules is None:
        errors.append(
            f"nvidia_driver_kernel_modules {kernel_modules!r} is not offered by {source} on {name}; "
            f"offered: {', '.join(sorted(offer.get('packages', {})))}"
        )
        return errors
    if build not in modules:
        errors.append(
            f"nvidia_driver_build {build!r} is not offered for {kernel_modules} modules by {source} on {name}; "
            f"offered: {', '.join(sorted(modules))}"
        )
        return errors
    if flavour not in modules[build]:
        errors.append(
            f"nvidia_driver_flavour {flavour!r} is not offered by {source} on {name}; "
            f"offered: {', '.join(sorted(modules[build]))}"
        )
    return errors


def package_names(platform: dict, source, branch, kernel_modules, build, flavour, kernels=()) -> list[str]:
    """The packages to install, branch filled in; versions are pinned separately.

    Templates with {kernel} (Ubuntu's precompiled modules) give one package per
    kernel to build for: linux-modules-nvidia-580-open-6.8.0-1015-aws follows the
    running kernel's flavour (aws, lowlatency, nvidia, ...), where the -generic
    metapackage would pull in a generic kernel beside it.
    """
    errors = plan_errors(platform, source, branch, "", kernel_modules, build, flavour)
    if errors:
        raise ValueError("; ".join(errors))
    offer = platform["sources"][source]
    templates = offer["packages"][kernel_modules][build][flavour]
    names = []
    for template in templates:
        name = fill_branch(template, branch, offer.get("unbranched_from", ""))
        if "{kernel}" in name:
            names.extend(name.replace("{kernel}", str(kernel)) for kernel in kernels)
        else:
            names.append(name)
    return names


def package_specs(names: list[str], family: str, pin="") -> list[str]:
    """Names with the exact version for the package manager: apt 'n=580.95.05-*' is
    not accepted by apt, so apt pins go through a preferences file and names stay
    bare here; dnf takes 'name-580.95.05'."""
    if family == "dnf" and pin:
        return [f"{name}-{pin}" for name in names]
    return list(names)


def apt_pin_version(branch, pin="") -> str:
    """The `Pin: version` glob of the apt preferences file."""
    if pin:
        return f"{pin}-*"
    return f"{branch}.*"


def kernel_header_packages(platform: dict, kernels, build) -> list[str]:
    """The header packages DKMS needs to build the module for each kernel.

    DKMS builds only for kernels whose headers are installed, and with recommends
    off the driver packages pull in none (Debian's nvidia-kernel-dkms only
    recommends linux-headers-*). NVIDIA's driver installation guide, "Pre-installation
    Actions": "the kernel headers and development packages for the running version
    of the kernel [must] be installed at the time of the driver installation, as well
    as whenever the driver is rebuilt". Precompiled modules need none.
    """
    if build != "dkms":
        return []
    names: list[str] = []
    for kernel in kernels:
        if not valid_kernel(kernel):
            raise ValueError(
                f"nvidia_driver_kernels: {kernel!r} is not a kernel release such as '6.1.0-50-amd64' (uname -r)"
            )
        for template in platform.get("kernel_headers", []):
            name = template.replace("{kernel}", str(kernel))
            if name not in names:
                names.append(name)
    return names


def dkms_kernel_pin_packages(platform: dict, running_kernel, build) -> list[str]:
    """The running kernel's kernel-devel-matched (EL9), so that dkms does not pull in a newer kernel.

    dkms on EL9 requires `(kernel-devel-matched if kernel-core)` (Fedora/EPEL dkms.spec), a
    package that itself requires kernel-core and kernel-devel of its own version: dnf satisfies
    it with the newest, which installs a newer kernel that the next boot starts (issue 29, item 8).
    Installed first at the running kernel's version, it satisfies dkms and pulls in nothing.
    """
    template = platform.get("dkms_kernel_pin", "")
    if build != "dkms" or not template or not running_kernel:
        return []
    if not valid_kernel(running_kernel):
        raise ValueError(f"the running kernel {running_kernel!r} is not a kernel release such as '6.1.0-50-amd64'")
    return [template.replace("{kernel}", str(running_kernel))]


def driver_marker(platform: dict, source, kernel_modules, build, flavour) -> str:
    """The package (template) whose version is the driver's version.

    Not linux-modules-* (versioned like the kernel), and not every package of the
    set: Debian's nvidia-persistenced has its own numbering (bookworm:
    535.171.04-1~deb12u1 beside driver 535.261.03-1).
    """
    templates = platform["sources"][source]["packages"][kernel_modules][build][flavour]
    return next(template for template in templates if not template.startswith("linux-modules-"))


def marker_prefix(platform: dict, source, kernel_modules, build, flavour) -> str:
    """What a package-name listing starts from: the marker up to its branch, if any."""
    return driver_marker(platform, source, kernel_modules, build, flavour).split("{branch}", 1)[0]


def kernel_header_metapackages(platform: dict, installed_images, build) -> list[str]:
    """The headers metapackage beside each installed kernel metapackage (DKMS only).

    A kernel metapackage (Debian linux-image-amd64, linux-image-cloud-amd64; Ubuntu
    linux-image-generic, linux-image-aws, ...) brings each new kernel; its headers twin
    (linux-headers-amd64, linux-headers-generic, ...) brings that kernel's headers with it, so
    DKMS builds the module when the kernel is installed, before the reboot into it. Versioned
    images (a digit after the prefix), unsigned and debug images have no twin.
    """
    template = platform.get("kernel_headers_metapackage", "")
    if build != "dkms" or not template:
        return []
    names = []
    for name in installed_images or []:
        flavour = str(name).strip()[len("linux-image-") :] if str(name).startswith("linux-image-") else ""
        if (
            not flavour
            or flavour[0].isdigit()
            or flavour.startswith("unsigned-")
            or flavour.endswith(("-dbg", "-unsigned"))
        ):
            continue
        header = template.replace("{flavour}", flavour)
        if header not in names:
            names.append(header)
    return names
