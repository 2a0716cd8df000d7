"""Decision logic of the dataset_volume role: source forms, EBS resolution, blank or not, fstab options.

The probe outputs are real: tests/fixtures/dataset_volume/captured_<release>_<case>.json hold, in
full, what the probe's own commands (blkid -p, wipefs --no-act --json, lsblk --json, cmp against
/dev/zero, findmnt --json, the blkid UUID lookup; same argv, LC_ALL=C) printed for loop devices
made by scripts/capture-volume-probes.sh in privileged local/debian-systemd containers:
bookworm (Debian 12.15, util-linux 2.38.1-5+deb12u3, e2fsprogs 1.47.0-2+b2, xfsprogs 6.1.0-1) and
trixie (Debian 13.8, util-linux 2.41.5-0+deb13u1, e2fsprogs 1.47.2-3+b12, xfsprogs 6.13.0-2+deb13u1),
kernel 6.18. Each file names its packages, date and how its device was made; refresh them with
`bash scripts/capture-volume-probes.sh` (root, container engine up). Every decision below is
checked on both releases' output. Hand-made inputs remain only where no loop device can show
the case, each saying why.
"""

import ast
import json
from functools import cache
from pathlib import Path

import pytest
from ansible_collections.gpu_fleet.common.plugins.filter.dataset_volume import FilterModule
from ansible_collections.gpu_fleet.common.plugins.module_utils import dataset_volume_logic as logic
from ansible_collections.gpu_fleet.common.plugins.modules import dataset_volume_probe

CAPTURES = Path(__file__).parent / "fixtures" / "dataset_volume"
RELEASES = ("bookworm", "trixie")
PROBED_TOOLS = ("blkid", "wipefs", "lsblk", "cmp", "findmnt")
CASES = (
    "blank",
    "random_first_mib",
    "ext4_labelled",
    "ext4_with_files",
    "ext4_mounted",
    "xfs",
    "xfs_mounted",
    "dos",
    "gpt",
    "swap",
    "ext4_then_dos",
    "xfs_over_ext4",
    "lvm",
)

# A fake /dev/disk/by-id of a Nitro instance with two EBS volumes and an instance store disk
# (hand-made: no EC2 instance here; the names follow udev's rules for Amazon's NVMe serials).
BY_ID = [
    "nvme-Amazon_EC2_NVMe_Instance_Storage_AWS1234567890ABCDEF",
    "nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0",
    "nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0-part1",
    "nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0_1",
    "nvme-Amazon_Elastic_Block_Store_vol0fedcba9876543210",
    "nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef01",
    "nvme-nvme.1d0f-766f6c3031323334353637383961626364656630-416d617a6f6e-00000001",
]


@cache
def capture(release, case):
    return json.loads((CAPTURES / f"captured_{release}_{case}.json").read_text())


def probe(release, case):
    """The probe dict exactly as dataset_volume_probe returns it, built from the captured outputs."""
    found = capture(release, case)
    tools = found["tools"]
    return {
        "device": found["device"],
        "blkid": tools["blkid"]["stdout"],
        "blkid_rc": tools["blkid"]["rc"],
        "wipefs": tools["wipefs"]["stdout"],
        "lsblk": tools["lsblk"]["stdout"],
        "zero_rc": tools["cmp"]["rc"],
    }


def mounted(release, case, findmnt="findmnt"):
    """What the probe makes of a captured findmnt run, as dataset_volume_probe reads it."""
    run = capture(release, case)["tools"][findmnt]
    return (json.loads(run["stdout"]).get("filesystems") or [{}])[0] if run["rc"] == 0 and run["stdout"].strip() else {}


def majmin(release, case):
    return json.loads(capture(release, case)["tools"]["lsblk"]["stdout"])["blockdevices"][0]["maj:min"]


def wipefs_uuid(release, case):
    """The filesystem UUID as wipefs read it: a second tool's word against the one blkid gave the logic."""
    return json.loads(capture(release, case)["tools"]["wipefs"]["stdout"])["signatures"][0]["uuid"]


def probe_module_commands():
    """Every command list written in dataset_volume_probe.py, its variables as {name}."""
    tree = ast.parse(Path(dataset_volume_probe.__file__).read_text())
    constants = {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        for target in node.targets
        if isinstance(target, ast.Name)
    }

    def word(element):
        if isinstance(element, ast.Constant):
            return element.value
        if isinstance(element, ast.Name):
            return constants.get(element.id, "{" + element.id + "}")
        return "{?}"

    return [
        [word(element) for element in node.elts]
        for node in ast.walk(tree)
        if isinstance(node, ast.List)
        and node.elts
        and isinstance(node.elts[0], ast.Constant)
        and node.elts[0].value in PROBED_TOOLS
    ]


def captured_commands():
    """Every captured argv, the run's own device, mount point and UUID as the module names them."""
    commands = []
    for path in sorted(CAPTURES.glob("captured_*.json")):
        found = json.loads(path.read_text())
        for name, run in found["tools"].items():
            argv = ["{device}" if arg == found["device"] else arg for arg in run["argv"]]
            if name.startswith("findmnt"):
                argv[-1] = "{mount_point}"
            if "--match-token" in argv:
                argv[-1] = "{source}"
            commands.append((path.name, name, argv))
    return commands


def test_the_captures_ran_exactly_the_probes_commands():
    in_module = probe_module_commands()
    captured = captured_commands()
    assert {path for path, _, _ in captured} == {
        f"captured_{release}_{case}.json" for release in RELEASES for case in CASES
    }, "captures missing or left over: rerun bash scripts/capture-volume-probes.sh"
    for path, name, argv in captured:
        assert argv in in_module, f"{path}: {name} ran {argv}, which dataset_volume_probe.py no longer runs: recapture"
    # And the other way: every command the module runs on a device or mount point was captured.
    seen = [argv for _, _, argv in captured]
    for argv in in_module:
        if any(arg in ("{device}", "{mount_point}", "{source}") for arg in argv):
            assert argv in seen, f"dataset_volume_probe.py runs {argv}, which no capture holds: recapture"


@pytest.mark.parametrize("release", RELEASES)
def test_captures_say_where_they_come_from(release):
    versions = {capture(release, case)["packages"]["util-linux"] for case in CASES}
    assert len(versions) == 1 and all(versions), versions
    # The module docstring names what was captured where; a refresh with new versions updates it.
    assert f"util-linux {versions.pop()}" in __doc__
    for case in CASES:
        found = capture(release, case)
        assert found["release"] == release and found["case"] == case
        assert found["device"].startswith("/dev/loop") and found["captured_on"]


@pytest.mark.parametrize(
    ("source", "volume_type", "kind"),
    [
        ("/dev/nvme1n1", "block", "path"),
        ("/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0", "block", "path"),
        ("UUID=28ac67b5-1fa3-43dd-8fd4-1bf3ede66b61", "block", "uuid"),
        ("LABEL=hf-cache", "block", "label"),
        ("vol-0123456789abcdef0", "block", "ebs"),
        ("vol-01234567", "block", "ebs"),
        ("vol-0123456789ABCDEF0", "block", "invalid"),
        ("vol-012345", "block", "invalid"),
        ("nvme1n1", "block", "invalid"),
        ("dev/nvme1n1", "block", "invalid"),
        ("/dev/../etc/passwd", "block", "invalid"),
        ("/dev/nvme1n1 ", "block", "invalid"),
        ("/dev/nvme 1n1", "block", "invalid"),
        ("", "block", "invalid"),
        ("fs-0123.efs.eu-west-1.amazonaws.com:/", "nfs", "nfs"),
        ("nas01:/export/hf", "nfs", "nfs"),
        ("[fd00::1]:/export/hf", "nfs", "nfs"),
        ("nas01", "nfs", "invalid"),
        ("nas01:export", "nfs", "invalid"),
        ("/srv/hf-cache", "bind", "bind"),
        ("srv/hf-cache", "bind", "invalid"),
        ("/srv/a,b", "bind", "invalid"),
        ("/srv/./hf-cache", "bind", "invalid"),
        ("/srv/hf#cache", "bind", "invalid"),
        ("/dev/sdb", "lvm", "invalid"),
    ],
)
def test_source_kind(source, volume_type, kind):
    assert logic.source_kind(source, volume_type) == kind


def test_ebs_serial_drops_the_dash():
    assert logic.ebs_serial("vol-0123456789abcdef0") == "vol0123456789abcdef0"
    with pytest.raises(ValueError, match="not an EBS volume id"):
        logic.ebs_serial("vol0123456789abcdef0")


def test_ebs_volume_resolves_through_the_nvme_serial():
    matches = logic.ebs_by_id_matches(BY_ID, "vol-0123456789abcdef0")
    # The whole disk first; never a partition, never a volume whose id merely starts the same.
    assert matches == [
        "nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0",
        "nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0_1",
    ]


def test_ebs_resolution_accepts_paths_and_finds_nothing_for_other_volumes():
    paths = [f"/dev/disk/by-id/{name}" for name in BY_ID]
    assert logic.ebs_by_id_matches(paths, "vol-0fedcba9876543210") == [
        "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0fedcba9876543210"
    ]
    assert logic.ebs_by_id_matches(paths, "vol-0aaaaaaaaaaaaaaaa") == []
    assert logic.ebs_by_id_matches([], "vol-0123456789abcdef0") == []


@pytest.mark.parametrize("release", RELEASES)
def test_blank_device_is_formatted_only_when_asked(release):
    assert logic.assess(probe(release, "blank"), "ext4", format_requested=True)["action"] == "format"
    refused = logic.assess(probe(release, "blank"), "ext4", format_requested=False)
    assert refused["action"] == "refuse"
    assert "is blank" in refused["reason"] and "dataset_volume_format: true" in refused["reason"]


@pytest.mark.parametrize("release", RELEASES)
@pytest.mark.parametrize("case", ["ext4_labelled", "ext4_with_files"])
@pytest.mark.parametrize("format_requested", [False, True])
def test_wanted_filesystem_is_mounted_as_it_is(release, case, format_requested):
    result = logic.assess(probe(release, case), "ext4", format_requested=format_requested)
    assert result["action"] == "mount"
    assert result["uuid"] == wipefs_uuid(release, case)


@pytest.mark.parametrize("release", RELEASES)
@pytest.mark.parametrize(
    ("case", "fstype", "words"),
    [
        (
            "ext4_labelled",
            "xfs",
            ["ext4 filesystem", "UUID={uuid}", "LABEL=dvdata", "not xfs", "dataset_volume_fstype: ext4"],
        ),
        ("xfs", "ext4", ["xfs filesystem", "UUID={uuid}", "not ext4", "dataset_volume_fstype: xfs"]),
        ("dos", "ext4", ["dos partition table", "is not blank", "1 partition(s): {device}p1"]),
        # The protective MBR is a signature wipefs sees and blkid -p does not name.
        ("gpt", "ext4", ["gpt partition table", "PMBR signature at offset 0x1fe", "1 partition(s): {device}p1"]),
        ("swap", "ext4", ["swap signature (UUID={uuid})", "not blank"]),
        ("lvm", "ext4", ["LVM2_member RAID member (UUID={uuid})", "not blank"]),
        ("random_first_mib", "ext4", ["non-zero data in its first MiB"]),
    ],
)
def test_anything_else_is_refused_saying_what_was_found(release, case, fstype, words):
    found = probe(release, case)
    result = logic.assess(found, fstype, format_requested=True)
    assert result["action"] == "refuse"
    signatures = json.loads(found["wipefs"])["signatures"]
    uuid = signatures[0]["uuid"] if signatures else None
    for word in words:
        assert word.format(uuid=uuid, device=found["device"]) in result["reason"]
    assert f"dataset_volume_format_confirm_device: {found['device']}" in result["reason"]


@pytest.mark.parametrize("release", RELEASES)
def test_two_filesystems_on_one_device_are_refused_naming_both(release):
    """An xfs made over an ext4 whose superblock stayed. bookworm's blkid -p calls it ambivalent
    (exit 8); trixie's (util-linux 2.41) prints nothing and exits 2, as for a blank device: the
    refusal then rests on wipefs, which lists both superblocks on both releases."""
    found = probe(release, "xfs_over_ext4")
    result = logic.assess(found, "xfs", format_requested=True)
    assert result["action"] == "refuse"
    assert "xfs signature at offset 0x0" in result["reason"]
    assert "ext4 signature at offset 0x438" in result["reason"]
    if found["blkid_rc"] == 8:
        assert "conflicting signatures (blkid -p exit 8)" in result["reason"]
    assert {release: found["blkid_rc"]} in ({"bookworm": 8}, {"trixie": 2})


@pytest.mark.parametrize("release", RELEASES)
def test_filesystem_with_a_second_signature_is_not_taken_as_plain(release):
    """A dos table written over an ext4 without wiping it: blkid -p reports both, exit 0."""
    found = probe(release, "ext4_then_dos")
    for fstype in ("ext4", "xfs"):
        result = logic.assess(found, fstype, format_requested=True)
        assert result["action"] == "refuse"
        assert "ext4 filesystem" in result["reason"] and "dos partition table" in result["reason"]
        assert "is not blank" in result["reason"]


@pytest.mark.parametrize("release", RELEASES)
def test_confirmation_erases_only_an_unmounted_device_and_only_with_format(release):
    dos = probe(release, "dos")
    assert logic.assess(dos, "ext4", format_requested=True, confirmed=True)["action"] == "wipe_and_format"
    assert logic.assess(dos, "ext4", format_requested=False, confirmed=True)["action"] == "refuse"
    in_use = logic.assess(probe(release, "xfs_mounted"), "ext4", format_requested=True, confirmed=True)
    assert in_use["action"] == "refuse"
    assert "in use" in in_use["reason"] and "mounted at /data" in in_use["reason"]
    assert "xfs filesystem" in in_use["reason"] and "not ext4" in in_use["reason"]


@pytest.mark.parametrize("release", RELEASES)
def test_a_mounted_device_with_the_wanted_filesystem_is_still_mountable(release):
    result = logic.assess(probe(release, "ext4_mounted"), "ext4", format_requested=True)
    assert "mounted at /mnt/old" in result["found"]
    assert result["action"] == "mount"


def test_mount_options_for_each_kind():
    assert logic.mount_options("block", False, ["noatime"], [], 30) == "noatime,rw,nofail,x-systemd.device-timeout=30s"
    assert logic.mount_options("block", True, ["noatime", "rw", "nofail"], [], 5) == (
        "noatime,ro,nofail,x-systemd.device-timeout=5s"
    )
    assert (
        logic.mount_options("bind", True, ["noatime"], [], 30) == "bind,noatime,ro,nofail,x-systemd.mount-timeout=30s"
    )
    assert logic.mount_options("nfs", False, [], ["nfsvers=4.1", "hard"], 30) == (
        "nfsvers=4.1,hard,rw,_netdev,nofail,x-systemd.mount-timeout=30s"
    )


# Hand-made: no NFS server can run here, so findmnt never saw an NFS mount; the fields are
# the ones findmnt --json prints for a block mount (captured above), with an NFS source.
NFS_MOUNT = {"maj:min": "0:52", "fsroot": "/", "source": "nas01:/export/hf", "fstype": "nfs4"}
# What findmnt printed for a folder bind-mounted on a mount point (fsroot is the folder).
BIND_MOUNT = mounted("trixie", "ext4_mounted", "findmnt_bind")
# What describe() returns for a folder and for nothing (os.stat results, not a probe tool's output).
FOLDER = {"exists": True, "isdir": True, "dev": 2049, "inode": 1234}
NOTHING_THERE = {"exists": False, "isdir": False, "dev": None, "inode": None}


@pytest.mark.parametrize("release", RELEASES)
def test_whether_the_mounted_block_device_is_ours(release):
    whole = mounted(release, "ext4_mounted")
    device = capture(release, "ext4_mounted")["device"]
    own = majmin(release, "ext4_mounted")
    assert whole["target"] == "/mnt/old" and whole["fsroot"] == "/"
    assert logic.mounted_is_ours({"mounted": whole, "majmin": own}, "block", device) is True
    # The same device by another name (UUID=, by-id) is still the same major:minor.
    uuid = wipefs_uuid(release, "ext4_mounted")
    assert logic.mounted_is_ours({"mounted": whole, "majmin": own}, "block", f"UUID={uuid}") is True
    # Another device (the next loop device's number) is not ours, nor one whose number is unknown.
    other = f"{own.split(':')[0]}:{int(own.split(':')[1]) + 1}"
    assert logic.mounted_is_ours({"mounted": whole, "majmin": other}, "block", "/dev/loop1") is False
    assert logic.mounted_is_ours({"mounted": whole, "majmin": ""}, "block", device) is False
    # A folder of the same device bind-mounted there: same major:minor, not its root.
    folder = mounted(release, "ext4_mounted", "findmnt_bind")
    assert folder["maj:min"] == own and folder["fsroot"] == "/srv"
    assert logic.mounted_is_ours({"mounted": folder, "majmin": own}, "block", device) is False
    # Nothing mounted at the mount point: findmnt exits 1 and prints nothing.
    assert mounted(release, "ext4_mounted", "findmnt_nothing") == {}
    assert logic.mounted_is_ours({"mounted": {}, "majmin": own}, "block", device) is False
    # The lvm type has no mount of its own.
    assert logic.mounted_is_ours({"mounted": whole, "majmin": own}, "lvm", device) is False


@pytest.mark.parametrize(
    ("probe_result", "volume_type", "source", "ours"),
    [
        ({"mounted": NFS_MOUNT}, "nfs", "nas01:/export/hf/", True),
        ({"mounted": {**NFS_MOUNT, "source": "nas01:/export/hf//"}}, "nfs", "nas01:/export/hf", True),
        ({"mounted": {**NFS_MOUNT, "source": "nas01:/"}}, "nfs", "nas01:/", True),
        ({"mounted": NFS_MOUNT}, "nfs", "nas02:/export/hf", False),
        ({"mounted": BIND_MOUNT, "source_dir": FOLDER, "mount_point": FOLDER}, "bind", "/srv/hf", True),
        (
            {"mounted": BIND_MOUNT, "source_dir": FOLDER, "mount_point": {**FOLDER, "inode": 99}},
            "bind",
            "/srv/hf",
            False,
        ),
        # A missing source folder is never the mount point, whatever the two stats hold.
        (
            {"mounted": BIND_MOUNT, "source_dir": NOTHING_THERE, "mount_point": NOTHING_THERE},
            "bind",
            "/srv/x",
            False,
        ),
    ],
)
def test_whether_the_mounted_export_or_folder_is_ours(probe_result, volume_type, source, ours):
    assert logic.mounted_is_ours(probe_result, volume_type, source) is ours


def test_filters_are_the_logic():
    filters = FilterModule().filters()
    assert filters["dataset_volume_source_kind"]("LABEL=x") == "label"
    assert filters["dataset_volume_assess"].__wrapped__ is logic.assess
    assert filters["dataset_volume_mounted_is_ours"].__wrapped__ is logic.mounted_is_ours


FSTAB_LINE = {"src": "UUID=f6f0", "fstype": "ext4", "opts": "noatime,rw,nofail", "dump": "0", "passno": "2"}


@pytest.mark.parametrize(
    ("entries", "in_place"),
    [
        ([FSTAB_LINE], True),
        ([], False),
        ([FSTAB_LINE, FSTAB_LINE], False),  # two lines for one mount point: the module decides
        ([{**FSTAB_LINE, "opts": "noatime,ro,nofail"}], False),
        ([{**FSTAB_LINE, "src": "UUID=0000"}], False),
        ([{**FSTAB_LINE, "passno": "0"}], False),
        ([{**FSTAB_LINE, "fstype": "xfs"}], False),
    ],
)
def test_the_mount_module_is_skipped_only_for_exactly_its_own_line(entries, in_place):
    assert logic.fstab_in_place(entries, "UUID=f6f0", "ext4", "noatime,rw,nofail", 0, 2) is in_place


def test_probe_reads_the_fstab_entries_of_the_mount_point_as_the_mount_module_writes_them(tmp_path):
    from ansible_collections.gpu_fleet.common.plugins.modules.dataset_volume_probe import fstab_entries

    fstab = tmp_path / "fstab"
    fstab.write_text(
        "# /data/hf was on /dev/vdb\n"
        "UUID=f6f0 /data/hf ext4 noatime,rw,nofail 0 2\n"
        "UUID=aaaa /data/hf/sub ext4 defaults 0 2\n"
        "server:/export /data/with\\040space nfs4 _netdev\n"
    )
    assert fstab_entries(str(fstab), "/data/hf") == [FSTAB_LINE | {"opts": "noatime,rw,nofail"}]
    # Missing dump and passno read as 0, as mount(8) reads them; octal escapes are undone.
    assert fstab_entries(str(fstab), "/data/with space") == [
        {"src": "server:/export", "fstype": "nfs4", "opts": "_netdev", "dump": "0", "passno": "0"}
    ]
    assert fstab_entries(str(tmp_path / "missing"), "/data/hf") == []
