#!/usr/bin/env bash
# Bring up a container engine and the local Debian systemd base images that
# Molecule and the lab run on. Nothing is pulled from a registry: images are
# built with debootstrap from the Debian mirror apt already uses.
#
# Idempotent: with the engine answering and the images at the current recipe,
# it returns in seconds.
set -euo pipefail

SUITES=${ENGINE_SUITES:-"bookworm trixie"}
IMAGE_REPO=${ENGINE_IMAGE_REPO:-local/debian-systemd}
IMAGE_PACKAGES="python3,python3-apt,sudo,systemd,systemd-sysv,dbus,procps,iproute2,ca-certificates,e2fsprogs,xfsprogs,kmod,openssh-server,util-linux,mount"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUNTIME_SHIM=/usr/local/libexec/capfilter-runc
DOCKERD_LOG=/var/log/project-dockerd.log

log() { printf '[engine] %s\n' "$*"; }
die() { printf '[engine] ERROR: %s\n' "$*" >&2; exit 1; }

# The recipe hash labels each image so that a changed package list or build
# step rebuilds it, and an unchanged one is reused.
recipe_hash() {
    printf '%s\n%s\n' "$IMAGE_PACKAGES" "$(sed -n '/^build_image()/,/^}/p' "${BASH_SOURCE[0]}")" |
        sha256sum | cut -c1-16
}

debian_mirror() {
    local mirror
    mirror=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null |
        awk '{print $2}' | grep -v security | head -n1 || true)
    if [ -z "$mirror" ]; then
        mirror=$(grep -hsE '^deb\s' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            awk '{print $2}' | grep -v security | head -n1 || true)
    fi
    [ -n "$mirror" ] || die "no Debian mirror found in /etc/apt/sources.list*; set one up for apt first"
    printf '%s' "$mirror"
}

engine_answers() { timeout 20 docker info >/dev/null 2>&1; }

install_engine() {
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    [ -x /usr/sbin/runc ] || missing+=(runc)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    [ -x /usr/bin/python3 ] || missing+=(python3)
    command -v losetup >/dev/null || missing+=(mount)
    # The controller side of the wheelhouse sync (ansible.posix.synchronize).
    command -v rsync >/dev/null || missing+=(rsync)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

configure_engine() {
    install -D -m 0755 "$HERE/capfilter-runc" "$RUNTIME_SHIM"
    mkdir -p /etc/docker
    local config='{
  "runtimes": {"capfilter": {"path": "'"$RUNTIME_SHIM"'"}},
  "default-runtime": "capfilter",
  "storage-driver": "overlay2"
}'
    if [ "$(cat /etc/docker/daemon.json 2>/dev/null)" != "$config" ]; then
        printf '%s\n' "$config" >/etc/docker/daemon.json
    fi
}

start_engine() {
    if command -v systemctl >/dev/null && [ "$(ps -o comm= -p 1)" = systemd ]; then
        systemctl restart docker
    else
        log "starting dockerd in the background (log: $DOCKERD_LOG)"
        # Started directly, not from a backgrounded list: a subshell would keep
        # this script's stdout open, and `make test` tees each stage's output.
        if ! pgrep -x containerd >/dev/null; then
            nohup containerd >>"${DOCKERD_LOG%.log}-containerd.log" 2>&1 </dev/null &
        fi
        nohup dockerd --containerd=/run/containerd/containerd.sock >>"$DOCKERD_LOG" 2>&1 </dev/null &
    fi
    for _ in $(seq 1 60); do
        engine_answers && return 0
        sleep 1
    done
    tail -n 30 "$DOCKERD_LOG" >&2 || true
    die "dockerd did not answer within 60 s; see $DOCKERD_LOG"
}

build_image() {
    local suite=$1 tag=$2 hash=$3 root
    root=$(mktemp -d "/var/tmp/rootfs-$suite.XXXXXX")
    log "debootstrap $suite (a minute or two)"
    if ! debootstrap --variant=minbase --include="$IMAGE_PACKAGES" \
        "$suite" "$root" "$(debian_mirror)" >"$root.log" 2>&1; then
        tail -n 20 "$root.log" >&2
        die "debootstrap $suite failed; full log in $root.log"
    fi
    # A Debian host takes its release's security updates (the hf_seed role refuses an rsync
    # without the 2026 fixes, which Debian ships there): the same mirror's security archive,
    # listed as a default install lists it, and its package lists fetched now.
    local mirror
    mirror=$(debian_mirror)
    if [[ $mirror == */debian ]]; then
        printf 'deb %s-security %s-security main\n' "$mirror" "$suite" >"$root/etc/apt/sources.list.d/security.list"
        chroot "$root" apt-get update -qq >>"$root.log" 2>&1 || {
            tail -n 20 "$root.log" >&2
            die "apt-get update of $suite's security archive failed; full log in $root.log"
        }
    fi
    # Kernel modules belong to the host: this unit only fails in a container.
    ln -sf /dev/null "$root/etc/systemd/system/systemd-modules-load.service"
    # Containers have no consoles to start gettys on.
    ln -sf /dev/null "$root/etc/systemd/system/getty.target"
    # Package lists stay: the image must know its packages as a host does.
    rm -rf "$root"/var/cache/apt/archives/*.deb
    tar -C "$root" -c . | docker import \
        --change "LABEL project.recipe=$hash" \
        --change 'CMD ["/lib/systemd/systemd"]' \
        --change 'ENV container=docker' \
        - "$tag" >/dev/null
    rm -rf "$root" "$root.log"
    log "built $tag"
}

main() {
    [ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts dockerd)"
    if engine_answers; then
        command -v rsync >/dev/null || install_engine
        log "engine answers: $(docker version --format '{{.Server.Version}}')"
    else
        install_engine
        configure_engine
        start_engine
        log "engine started: $(docker version --format '{{.Server.Version}}')"
    fi

    local hash pids=() suite tag
    hash=$(recipe_hash)
    for suite in $SUITES; do
        tag="$IMAGE_REPO:$suite"
        if [ "$(docker image inspect --format '{{index .Config.Labels "project.recipe"}}' "$tag" 2>/dev/null)" = "$hash" ]; then
            log "image $tag is current"
            continue
        fi
        command -v debootstrap >/dev/null || install_engine
        build_image "$suite" "$tag" "$hash" &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || die "an image build failed"; done
}

main "$@"
