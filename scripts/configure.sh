#!/usr/bin/env bash
# Configure the meson build dir (default: build) with every component this
# machine can build enabled explicitly, so nothing is dropped silently:
# MPI + UCX always; CUDA + NCCL when /usr/local/cuda/bin/nvcc exists.
# Extra arguments go to `meson setup`.
set -euo pipefail
builddir=${BUILDDIR:-build}
args=(-Dmpi=enabled -Ducx=enabled)
here=$(cd "$(dirname "$0")" && pwd)
if [ -x /usr/local/cuda/bin/nvcc ]; then
  args+=(-Dcuda=enabled -Dnccl=enabled --native-file "$here/nvcc-native.ini")
else
  args+=(-Dcuda=disabled -Dnccl=disabled)
fi
if [ -d "$builddir" ]; then
  meson setup --reconfigure "$builddir" "${args[@]}" "$@"
else
  meson setup "$builddir" "${args[@]}" "$@"
fi
