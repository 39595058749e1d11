#!/bin/sh
# Builds the alloctrace container image offline: no base image is pulled.
# The rootfs is the binary (stripped: symbols of the targets are read from
# their files, never from alloctrace's own) and the shared libraries `ldd`
# lists for it, at the paths the dynamic loader looks for them.
#
#   deploy/build-image.sh BINARY [TAG]     (TAG defaults to localhost/alloctrace:latest)
#
# `cargo xtask image` builds the binary and runs this.
set -eu

binary=$1
tag=${2:-localhost/alloctrace:latest}
here=$(cd "$(dirname "$0")" && pwd)
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT

mkdir -p "$context/rootfs/usr/bin" "$context/rootfs/var/lib/alloctrace"
cp "$binary" "$context/rootfs/usr/bin/alloctrace"
strip "$context/rootfs/usr/bin/alloctrace"
# Lines are `name => /path (addr)` or `/path (addr)`; vdso has no file.
ldd "$binary" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' |
    while read -r library; do
        mkdir -p "$context/rootfs$(dirname "$library")"
        cp -L "$library" "$context/rootfs$library"
    done
cp "$here/Containerfile" "$context/Containerfile"
podman build --quiet --tag "$tag" "$context"
