"""The kernel the next boot starts, read as GRUB and grubby read it, not trusted as printed.

Shapes: grub-mkconfig_lib's grub_file_is_not_garbage (what 10_linux leaves out of the menu),
/etc/default/grub as sh reads it (a comment after the value), grubby --default-kernel on an
EL host whose default entry is the rescue image (/boot/vmlinuz-0-rescue-<machine id>).
"""

from ansible_collections.gpu_fleet.common.plugins.module_utils.nvidia_driver.boot import boot_kernel, boot_module_errors

IMAGES = "#grubby\n#grub_default\n{grub}#images\n6.1.0-28-amd64\n{extra}"


def test_a_package_managers_leftover_image_is_not_the_boot_kernel():
    for leftover in ("6.1.0-99-amd64.dpkg-bak", "6.1.0-99-amd64.dpkg-tmp", "6.1.0-99-amd64.rpmnew"):
        boot = boot_kernel(IMAGES.format(grub="", extra=leftover + "\n"))
        assert boot["kernel"] == "6.1.0-28-amd64", leftover
        assert boot["known"] is True


def test_a_comment_after_grub_default_is_the_shells_not_part_of_the_value():
    for line in ("GRUB_DEFAULT=0  # the first entry", 'GRUB_DEFAULT="0" # quoted', "GRUB_DEFAULT='0'"):
        boot = boot_kernel(IMAGES.format(grub=line + "\n", extra="6.1.0-30-amd64\n"))
        assert (boot["kernel"], boot["known"]) == ("6.1.0-30-amd64", True), line
    boot = boot_kernel(IMAGES.format(grub="GRUB_DEFAULT=saved # last booted\n", extra=""))
    assert boot["known"] is False and boot["how"] == "GRUB_DEFAULT=saved"


def test_grubbys_rescue_entry_is_not_taken_for_a_kernel_release():
    probe = "#grubby\n/boot/vmlinuz-0-rescue-4f1e2d3c5b6a\n#grub_default\n#images\n5.14.0-427.13.1.el9_4.x86_64\n"
    boot = boot_kernel(probe)
    assert boot["known"] is False
    assert boot["kernel"] == ""
    assert "0-rescue-4f1e2d3c5b6a" in boot["how"]
    # The refusal asks for the variable the user can set, not for one they never set.
    errors = boot_module_errors(boot, "", "580.95.05")
    assert errors and "nvidia_driver_boot_kernel" in errors[0]
    assert "nvidia_driver_kernels" not in errors[0]


def test_grubby_printing_something_else_is_not_followed():
    for printed in ("", "/boot/vmlinuz-", "error: no default kernel", "/boot/vmlinuz-5.14.0-1.el9.x86_64.rpmsave"):
        boot = boot_kernel(f"#grubby\n{printed}\n#grub_default\n#images\n5.14.0-427.el9.x86_64\n")
        if printed == "":
            # grubby printed nothing: the images decide, as on a host without grubby.
            assert boot["kernel"] == "5.14.0-427.el9.x86_64"
        else:
            assert boot["known"] is False, printed
