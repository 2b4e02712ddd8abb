#!/usr/bin/env bash
# Run commands on a lavapipe with cooperative matrices.
#
#     scripts/lavapipe_coop.sh cargo test --release --workspace --test kernels
#     scripts/lavapipe_coop.sh --exec target/release/seedscope analyze --backend wgpu
#
# The co-moment kernel on cooperative matrices (cross_coop.wgsl: tensor cores, WMMA, Apple's
# SIMD-group matrices) needs an adapter that offers them. lavapipe, Mesa's Vulkan driver on the
# CPU, offers 8 x 8 x 8 f16 x f16 -> f32 fragments from Mesa 26.1 on, which Debian ships for
# trixie (trixie-backports), not for this machine's bookworm. So the first run builds a minimal
# trixie root with that lavapipe (debootstrap, about 700 MB, kept in SEEDSCOPE_TRIXIE_ROOT,
# default ~/.cache/seedscope-trixie). The root sees this machine's /proc, /dev, /sys, /tmp, the
# current directory and the target directory at the same paths, so binaries built here run in
# it as they are.
#
# Without --exec the command runs here, and cargo runs each test binary it starts inside the
# root (a cargo runner: this script with --exec), with SEEDSCOPE_EXPECT_COOPERATIVE=1: the
# tests that need cooperative matrices fail, instead of saying they did not run, if the
# adapter lacks them. With --exec the command itself runs inside the root.
#
# Needs root (chroot, mounts), as CI is; elsewhere it asks sudo.
set -euo pipefail
root="${SEEDSCOPE_TRIXIE_ROOT:-$HOME/.cache/seedscope-trixie}"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"

in_root=""
if [ "${1:-}" = "--exec" ]; then
    in_root=1
    shift
fi

if [ ! -f "$root/.ready" ]; then
    echo "lavapipe_coop: building a trixie root with Mesa's lavapipe from trixie-backports in $root"
    command -v debootstrap >/dev/null || {
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq debootstrap >/dev/null
    }
    # Never remove a root that still has this machine's directories mounted in it.
    if grep -q " $root/" /proc/mounts; then
        echo "lavapipe_coop: $root has mounts left from an earlier run; unmount them first" >&2
        exit 1
    fi
    $SUDO rm -rf "$root"
    $SUDO debootstrap --variant=minbase trixie "$root" http://deb.debian.org/debian >/dev/null
    echo "deb http://deb.debian.org/debian trixie-backports main" |
        $SUDO tee "$root/etc/apt/sources.list.d/backports.list" >/dev/null
    $SUDO chroot "$root" /bin/sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends -t trixie-backports mesa-vulkan-drivers \
        >/dev/null'
    $SUDO touch "$root/.ready"
fi

# The checkout and the target directory at their own paths, and the machine's /tmp.
target="${CARGO_TARGET_DIR:-$PWD/target}"
mounted=()
bind() {
    [ -d "$1" ] || return 0
    # Already the same directory in the root (an outer call's mount, or a path inside one).
    if [ -d "$root$1" ] && [ "$(stat -c %d:%i "$1")" = "$(stat -c %d:%i "$root$1")" ]; then
        return 0
    fi
    $SUDO mkdir -p "$root$1"
    $SUDO mount --rbind "$1" "$root$1"
    mounted+=("$root$1")
}
unbind() {
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
        $SUDO umount -R -l "${mounted[$i]}" || true
    done
}
trap unbind EXIT
# Only what the root does not see yet (cargo's runner calls find the outer call's mounts in
# place), and only that is unmounted again.
for d in /proc /dev /sys /tmp "$PWD" "$target"; do bind "$d"; done

if [ -n "$in_root" ]; then
    $SUDO chroot "$root" /usr/bin/env -C "$PWD" "$@"
else
    echo "lavapipe_coop: $($SUDO chroot "$root" dpkg-query -W -f '${Package} ${Version}' mesa-vulkan-drivers)"
    export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$(realpath "$0") --exec"
    export SEEDSCOPE_EXPECT_COOPERATIVE=1
    "$@"
fi
