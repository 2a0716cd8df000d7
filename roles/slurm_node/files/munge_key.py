# Writes the munge key given base64 on stdin to argv[1], 0400 and owned by argv[3] (munge) and its
# group, replaced whole by a rename in its folder: never written through a link, never readable by
# others, not even while written. argv[2] "check" only compares. Prints "unchanged" or "changed".
import base64
import os
import pwd
import stat
import sys

path, mode, owner = sys.argv[1], sys.argv[2], sys.argv[3]
key = base64.b64decode(sys.stdin.read().strip(), validate=True)
try:
    munge = pwd.getpwnam(owner)
except KeyError:
    if mode == "check":  # munge is not installed yet: the run would install it and write the key
        print("changed")
        sys.exit(0)
    raise
try:
    st = os.lstat(path)
except FileNotFoundError:
    st = None
same = False
if st is not None and stat.S_ISREG(st.st_mode):
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as current:
        same = current.read() == key
    same = same and (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (munge.pw_uid, munge.pw_gid, 0o400)
if same:
    print("unchanged")
    sys.exit(0)
if mode == "write":
    folder = os.path.dirname(path)
    tmp = os.path.join(folder, ".munge-key.tmp")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
    os.fchown(fd, munge.pw_uid, munge.pw_gid)
    os.fchmod(fd, 0o400)
    with os.fdopen(fd, "wb") as out:
        out.write(key)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
print("changed")
