#!/usr/bin/env bash
# Build the wheelhouse the hf_loader role installs from: every wheel of the
# production lock for each target Python, plus the project's own package.
# Built once per machine (outside the clone) and reused: fleets are often
# air-gapped, and hosts must not each pull gigabytes from the internet.
#
#   WHEELHOUSE_DIR   where to build (default /var/cache/gpu-fleet/wheelhouse)
#   WHEELHOUSE_PYTHONS  target Python versions (default "3.11 3.13": Debian 12, 13)
#   WHEELHOUSE_LOCK  the lock (default requirements/loader-prod.txt)
#   WHEELHOUSE_PACKAGE  no: only the lock's wheels, not the project's package (pull mode's toolchain)
#
# The lock must carry a --hash for every pin (scripts/hash-lock.py writes them): pip
# downloads with --require-hashes, so a wheel that is not the one the lock names is
# refused here as it is on the hosts. WHEELHOUSE_UNHASHED_LOCK=yes is hash-lock.py's
# own download, the one that makes the hashes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

WHEELHOUSE_DIR=${WHEELHOUSE_DIR:-/var/cache/gpu-fleet/wheelhouse}
WHEELHOUSE_PYTHONS=${WHEELHOUSE_PYTHONS:-"3.11 3.13"}
LOCK=${WHEELHOUSE_LOCK:-requirements/loader-prod.txt}
PIP=${PIP:-.venvs/controller/bin/pip}
ARCH=$(uname -m)
PLATFORMS=()
for glibc in 2_5 2_12 2_17 2_24 2_27 2_28 2_31 2_34 2_35; do PLATFORMS+=(--platform "manylinux_${glibc}_${ARCH}"); done
PLATFORMS+=(--platform "manylinux1_${ARCH}" --platform "manylinux2010_${ARCH}" --platform "manylinux2014_${ARCH}")
LOCK_HASH=$(sha256sum "$LOCK" | cut -c1-12)
HASH_ARGS=(--require-hashes)
if [ "${WHEELHOUSE_UNHASHED_LOCK:-no}" = yes ]; then
    HASH_ARGS=()
else
    unhashed=$(grep -Ev '^[[:space:]]*(#|$)' "$LOCK" | grep -v -e '--hash=sha256:' | cut -d' ' -f1 || true)
    if [ -n "$unhashed" ]; then
        echo "[wheelhouse] $LOCK has pins without --hash: $(echo $unhashed)." >&2
        echo "[wheelhouse] Run: python3 scripts/hash-lock.py $LOCK" >&2
        exit 2
    fi
fi

for version in $WHEELHOUSE_PYTHONS; do
    tag="cp${version/./}"
    target="$WHEELHOUSE_DIR/$tag"
    mkdir -p "$target"
    if [ -f "$target/.lock-$LOCK_HASH" ]; then
        echo "[wheelhouse] $tag: wheels of $LOCK are present"
    else
        echo "[wheelhouse] $tag: downloading the wheels of $LOCK (about 3 GB the first time)"
        "$PIP" download --quiet --no-deps --only-binary=:all: "${HASH_ARGS[@]}" --dest "$target" \
            --python-version "$version" --implementation cp \
            --abi "$tag" --abi abi3 --abi none "${PLATFORMS[@]}" -r "$LOCK" 2> >(grep -v "is ignored: it is neither" >&2)
        rm -f "$target"/.lock-*
        touch "$target/.lock-$LOCK_HASH"
    fi
    if [ "${WHEELHOUSE_PACKAGE:-yes}" = no ]; then
        echo "[wheelhouse] $tag: $(find "$target" -name '*.whl' | wc -l) wheels, $(du -sh "$target" | cut -f1)"
        continue
    fi
    # Reproducible bytes for an unchanged source, and the old file (and its
    # mtime) kept when the bytes are the same, so hosts resync and reinstall
    # the package only when it really changed.
    # Built from a private copy: the labs of make test build their wheelhouses side by side,
    # and setuptools' build/ and egg-info folders in the shared source tree made one build
    # delete what another was copying into them.
    built=$(mktemp -d)
    cp -r files/hf_loader/pyproject.toml files/hf_loader/README.md files/hf_loader/src "$built/"
    rm -rf "$built"/src/*.egg-info
    find "$built/src" -name __pycache__ -prune -exec rm -rf {} +
    SOURCE_DATE_EPOCH=$(git log -1 --format=%ct -- files/hf_loader 2>/dev/null || echo 315532800) \
        "$PIP" wheel --quiet --no-deps --wheel-dir "$built/wheels" "$built"
    for wheel in "$built"/wheels/*.whl; do
        if ! cmp -s "$wheel" "$target/$(basename "$wheel")"; then
            rm -f "$target"/hf_loader-*.whl
            mv "$wheel" "$target/"
            echo "[wheelhouse] $tag: new package wheel $(basename "$wheel")"
        fi
    done
    rm -rf "$built"
    echo "[wheelhouse] $tag: $(find "$target" -name '*.whl' | wc -l) wheels, $(du -sh "$target" | cut -f1)"
done
