#!/usr/bin/env bash
# Install moerun's build and test dependencies from Debian (idempotent).
# CUDA/cuBLAS/NCCL are not Debian packages: they are used when a CUDA toolkit
# is found under /usr/local/cuda (see README).
set -euo pipefail
pkgs=(build-essential meson ninja-build pkg-config
      libopenblas-dev libcjson-dev libprotobuf-c-dev protobuf-c-compiler
      openmpi-bin libopenmpi-dev libucx-dev ucx-utils
      libcmocka-dev python3-numpy)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#pkgs[@]} packages present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
