"""Decision logic of the dataset_volume role: source forms, EBS resolution, blank or not, fstab options.

The probe outputs below are what blkid -p, wipefs --no-act --json and lsblk --json print on
Debian for the cases named (recorded on bookworm and trixie loop devices).
"""

import json

import pytest
from ansible_collections.gpu_fleet.common.plugins.filter.dataset_volume import FilterModule
from ansible_collections.gpu_fleet.common.plugins.module_utils import dataset_volume_logic as logic

# A fake /dev/disk/by-id of a Nitro instance with two EBS volumes and an instance store disk.
BY_ID = [
    "nvme-Amazon_EC2_NVMe_Instance_Storage_AWS1234567890ABCDEF",
    "nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0",
    "nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0-part1",
    "nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0_1",
    "nvme-Amazon_Elastic_Block_Store_vol0fedcba9876543210",
    "nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef01",
    "nvme-nvme.1d0f-766f6c3031323334353637383961626364656630-416d617a6f6e-00000001",
]

NOTHING = {"blkid": "", "blkid_rc": 2, "wipefs": '{"signatures": []}', "zero_rc": 0}


def lsblk(children=(), mountpoint=None):
    disk = {"name": "/dev/loop0", "path": "/dev/loop0", "type": "loop", "mountpoint": mountpoint, "maj:min": "7:0"}
    if children:
        disk["children"] = [{"name": c, "path": c, "type": "part", "mountpoint": None} for c in children]
    return json.dumps({"blockdevices": [disk]})


def probe(**overrides):
    return {"device": "/dev/loop0", **NOTHING, "lsblk": lsblk(), **overrides}


EXT4 = {
    "blkid": "DEVNAME=/dev/loop0\nLABEL=dvdata\nUUID=28ac67b5-1fa3-43dd-8fd4-1bf3ede66b61\n"
    "VERSION=1.0\nTYPE=ext4\nUSAGE=filesystem\n",
    "blkid_rc": 0,
    "wipefs": json.dumps(
        {"signatures": [{"device": "loop0", "offset": "0x438", "type": "ext4", "uuid": "28ac", "label": "dvdata"}]}
    ),
    "zero_rc": 1,
}
XFS = {
    "blkid": "DEVNAME=/dev/loop0\nUUID=44e86876-761d-4695-890f-e783d8b1dab9\nTYPE=xfs\nUSAGE=filesystem\n",
    "blkid_rc": 0,
    "wipefs": json.dumps({"signatures": [{"device": "loop0", "offset": "0x0", "type": "xfs", "uuid": "44e8"}]}),
    "zero_rc": 1,
}
DOS = {
    "blkid": "DEVNAME=/dev/loop0\nPTTYPE=dos\n",
    "blkid_rc": 0,
    "wipefs": json.dumps({"signatures": [{"device": "loop0", "offset": "0x1fe", "type": "dos"}]}),
    "zero_rc": 1,
}
SWAP = {
    "blkid": "DEVNAME=/dev/loop0\nUUID=1b2c\nTYPE=swap\nUSAGE=other\n",
    "blkid_rc": 0,
    "wipefs": json.dumps({"signatures": [{"device": "loop0", "offset": "0xff6", "type": "swap"}]}),
    "zero_rc": 1,
}


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


def test_blank_device_is_formatted_only_when_asked():
    assert logic.assess(probe(), "ext4", format_requested=True)["action"] == "format"
    refused = logic.assess(probe(), "ext4", format_requested=False)
    assert refused["action"] == "refuse"
    assert "is blank" in refused["reason"] and "dataset_volume_format: true" in refused["reason"]


@pytest.mark.parametrize("format_requested", [False, True])
def test_wanted_filesystem_is_mounted_as_it_is(format_requested):
    result = logic.assess(probe(**EXT4), "ext4", format_requested=format_requested)
    assert result["action"] == "mount"
    assert result["uuid"] == "28ac67b5-1fa3-43dd-8fd4-1bf3ede66b61"


@pytest.mark.parametrize(
    ("found", "fstype", "words"),
    [
        (EXT4, "xfs", ["ext4 filesystem", "UUID=28ac67b5", "not xfs", "dataset_volume_fstype: ext4"]),
        (XFS, "ext4", ["xfs filesystem", "not ext4"]),
        (DOS, "ext4", ["dos partition table", "is not blank"]),
        (SWAP, "ext4", ["swap signature", "not blank"]),
        ({"zero_rc": 1}, "ext4", ["non-zero data in its first MiB"]),
        ({"blkid": "", "blkid_rc": 8}, "ext4", ["conflicting signatures"]),
        ({"lsblk": lsblk(children=["/dev/loop0p1"])}, "ext4", ["1 partition(s): /dev/loop0p1"]),
        (
            {"wipefs": json.dumps({"signatures": [{"offset": "0x218", "type": "LVM2_member"}]})},
            "ext4",
            ["LVM2_member signature at offset 0x218"],
        ),
    ],
)
def test_anything_else_is_refused_saying_what_was_found(found, fstype, words):
    result = logic.assess(probe(**found), fstype, format_requested=True)
    assert result["action"] == "refuse"
    for word in words:
        assert word in result["reason"]
    assert "dataset_volume_format_confirm_device: /dev/loop0" in result["reason"]


def test_filesystem_with_a_second_signature_is_not_taken_as_plain():
    wipefs = json.loads(EXT4["wipefs"])
    wipefs["signatures"].append({"offset": "0x1fe", "type": "dos"})
    result = logic.assess(probe(**{**EXT4, "wipefs": json.dumps(wipefs)}), "ext4", format_requested=True)
    assert result["action"] == "refuse"
    assert "dos signature at offset 0x1fe" in result["reason"]


def test_confirmation_erases_only_an_unmounted_device_and_only_with_format():
    assert logic.assess(probe(**DOS), "ext4", format_requested=True, confirmed=True)["action"] == "wipe_and_format"
    assert logic.assess(probe(**DOS), "ext4", format_requested=False, confirmed=True)["action"] == "refuse"
    in_use = logic.assess(probe(**XFS, lsblk=lsblk(mountpoint="/data")), "ext4", format_requested=True, confirmed=True)
    assert in_use["action"] == "refuse"
    assert "in use" in in_use["reason"] and "mounted at /data" in in_use["reason"]
    assert "xfs filesystem" in in_use["reason"] and "not ext4" in in_use["reason"]


def test_a_mounted_device_with_the_wanted_filesystem_is_still_mountable():
    result = logic.assess(probe(**EXT4, lsblk=lsblk(mountpoint="/mnt/old")), "ext4", format_requested=True)
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


MOUNTED_BLOCK = {"maj:min": "7:0", "fsroot": "/", "source": "/dev/loop0", "fstype": "ext4"}
NFS_MOUNT = {"maj:min": "0:52", "fsroot": "/", "source": "nas01:/export/hf", "fstype": "nfs4"}
FOLDER = {"exists": True, "isdir": True, "dev": 2049, "inode": 1234}
NOTHING_THERE = {"exists": False, "isdir": False, "dev": None, "inode": None}


@pytest.mark.parametrize(
    ("probe_result", "volume_type", "source", "ours"),
    [
        ({"mounted": {}, "majmin": "7:0"}, "block", "/dev/loop0", False),
        ({"mounted": MOUNTED_BLOCK, "majmin": "7:0"}, "block", "/dev/loop0", True),
        # The same device by another name (UUID=, by-id) is still the same major:minor.
        ({"mounted": MOUNTED_BLOCK, "majmin": "7:0"}, "block", "UUID=28ac67b5", True),
        ({"mounted": MOUNTED_BLOCK, "majmin": "7:1"}, "block", "/dev/loop1", False),
        # A bind mount of a folder on the device: same device, not its root.
        ({"mounted": {**MOUNTED_BLOCK, "fsroot": "/srv"}, "majmin": "7:0"}, "block", "/dev/loop0", False),
        ({"mounted": MOUNTED_BLOCK, "majmin": ""}, "block", "/dev/loop0", False),
        ({"mounted": NFS_MOUNT}, "nfs", "nas01:/export/hf/", True),
        ({"mounted": {**NFS_MOUNT, "source": "nas01:/export/hf//"}}, "nfs", "nas01:/export/hf", True),
        ({"mounted": {**NFS_MOUNT, "source": "nas01:/"}}, "nfs", "nas01:/", True),
        ({"mounted": NFS_MOUNT}, "nfs", "nas02:/export/hf", False),
        ({"mounted": MOUNTED_BLOCK, "source_dir": FOLDER, "mount_point": FOLDER}, "bind", "/srv/hf", True),
        (
            {"mounted": MOUNTED_BLOCK, "source_dir": FOLDER, "mount_point": {**FOLDER, "inode": 99}},
            "bind",
            "/srv/hf",
            False,
        ),
        # A missing source folder is never the mount point, whatever the two stats hold.
        (
            {"mounted": MOUNTED_BLOCK, "source_dir": NOTHING_THERE, "mount_point": NOTHING_THERE},
            "bind",
            "/srv/x",
            False,
        ),
        ({"mounted": MOUNTED_BLOCK, "majmin": "7:0"}, "lvm", "/dev/loop0", False),
    ],
)
def test_whether_the_mounted_volume_is_ours(probe_result, volume_type, source, ours):
    assert logic.mounted_is_ours(probe_result, volume_type, source) is ours


def test_filters_are_the_logic():
    filters = FilterModule().filters()
    assert filters["dataset_volume_source_kind"]("LABEL=x") == "label"
    assert filters["dataset_volume_assess"] is logic.assess
    assert filters["dataset_volume_mounted_is_ours"] is logic.mounted_is_ours


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
