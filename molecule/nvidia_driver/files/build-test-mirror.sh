#!/bin/sh
# Build a signed, flat apt repository laid out like NVIDIA's CUDA repository
# (BASE/<platform>/x86_64/) with stand-in packages: same names, versions and
# dependencies between them as the real driver packages, but empty. apt
# resolves the role's package set against it for real; nothing is a kernel
# module. Usage: build-test-mirror.sh BASE PLATFORM TABLE
# (e.g. /srv/nvidia-mirror debian12 /usr/local/share/mirror-packages.tsv)
set -eu
base=$1
platform=$2
table=$3
repo="$base/$platform/x86_64"
work=$(mktemp -d)
export GNUPGHOME="$work/gnupg"
mkdir -p "$repo" "$GNUPGHOME"
chmod 700 "$GNUPGHOME"

package() { # name version depends
    dir="$work/pkg/$1_$2"
    mkdir -p "$dir/DEBIAN"
    {
        echo "Package: $1"
        echo "Version: $2"
        echo "Architecture: amd64"
        echo "Maintainer: gpu-fleet tests <tests@gpu-fleet.invalid>"
        [ -n "$3" ] && echo "Depends: $3"
        case $1 in
            nvidia-kernel-open-dkms) echo "Conflicts: nvidia-kernel-dkms" ;;
            nvidia-kernel-dkms) echo "Conflicts: nvidia-kernel-open-dkms" ;;
        esac
        echo "Description: stand-in for $1 (Molecule test mirror)"
    } > "$dir/DEBIAN/control"
    dpkg-deb --build -Zgzip "$dir" "$repo/$1_$2_amd64.deb" > /dev/null
}

# The names, branch ranges and dependencies come from TABLE, each row citing its source.
tab=$(printf '\t')
for version in 570.172.08 580.82.07 580.95.05 590.44.01; do
    v="$version-1"
    branch=${version%%.*}
    grep -v '^#' "$table" | while IFS="$tab" read -r name first last depends _source; do
        [ "$branch" -ge "$first" ] && [ "$branch" -le "$last" ] || continue
        [ "$depends" = - ] && depends=
        package "$(echo "$name" | sed "s/{branch}/$branch/")" "$v" "$(echo "$depends" | sed "s/{v}/$v/g")"
    done
done

gpg --batch --quiet --passphrase '' --quick-gen-key 'gpu-fleet test mirror <mirror@gpu-fleet.invalid>' ed25519 sign never
gpg --batch --armor --export > "$base/test-key.asc"
cd "$repo"
apt-ftparchive packages . > Packages
gzip -9c Packages > Packages.gz
apt-ftparchive -o APT::FTPArchive::Release::Origin=gpu-fleet-test release . > Release
gpg --batch --yes --clearsign -o InRelease Release
gpg --batch --yes -abs -o Release.gpg Release
rm -rf "$work"
