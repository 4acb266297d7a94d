#!/usr/bin/env bash
# scripts/gpu-run.sh — run the CUDA backend tests and moerun-bench-gpu on the
# GPU machine from binaries built here.
#
# The GPU machine (H100/H200, CUDA 13.0 + driver 580, nvcc, CMake, ninja,
# Python) has no Debian packages and no network, so it cannot build moerun's
# CPU-side dependencies. Instead this script packs the build output plus the
# shared libraries it needs into one archive (< 64 MiB, the device tool's
# carry limit), and unpacks and runs it there. cudart/cuBLAS are NOT packed
# (libcublasLt alone is ~500 MB): the binaries use the machine's
# /usr/local/cuda/lib64 (same CUDA 13.0 as here; RUNPATH already points there).
#
# 1. Here (build machine), from the repo root:
#      BUILDDIR=build-cuda bash scripts/configure.sh && ninja -C build-cuda
#      bash scripts/gpu-run.sh pack [BUILDDIR] [ARCHIVE]
#    defaults: build-cuda, .gpu-pack.tar.xz (add "/.gpu-pack.tar.xz" to
#    .git/info/exclude so it is ignored and travels only when carried).
#    The archive holds bin/ (every executable of BUILDDIR, same relative
#    paths), lib/ (the packages below unpacked with `dpkg -x` from
#    /var/cache/apt/archives; a package whose .deb is not cached but which is
#    installed contributes the .so files `dpkg -L` lists) and MANIFEST.
#    Packages: OpenBLAS (libopenblas0-pthread + libgfortran5, libquadmath0),
#    cJSON (libcjson1), protobuf-c (libprotobuf-c1), Open MPI (libopenmpi3,
#    libhwloc15, libpmix2, libevent-*-2.1-7, libfabric1, libibverbs1,
#    librdmacm1, libpsm2-2, libpsm-infinipath1), UCX (libucx0), cmocka
#    (libcmocka0). The GPU test and bench need only OpenBLAS and cJSON; the
#    rest lets the other binaries load (running mpirun there is not attempted).
# 2. On the GPU machine (device tool: carry [".gpu-pack.tar.xz"]), repo root:
#      bash scripts/gpu-run.sh run [ARCHIVE] [--quick]
#    Unpacks to /tmp/moerun-gpu-pack, sets LD_LIBRARY_PATH, prints the machine
#    (nvidia-smi, nvcc, driver) and any library ldd cannot resolve, runs every
#    gpu test op (test_gpu_ops OP, plus --bf16 for the GEMM ops) with
#    MOERUN_REQUIRE_GPU=1 (no GPU = FAIL, never a skip), then moerun-bench-gpu.
#    Writes to $OUT (default ./gpu-run-out), 4 files (the tool returns ≤ 8):
#      env.txt  gpu-tests.log  bench-gpu.txt  bench-gpu.json
#    and prints a summary. Exit 0 only when every test passed and the bench ran.
set -euo pipefail

die() { echo "gpu-run: $*" >&2; exit 1; }

# ---- pack (build machine) -----------------------------------------------------
pack_pkgs=(libopenblas0-pthread libgfortran5 libquadmath0 libcjson1 libprotobuf-c1
  libopenmpi3 libhwloc15 libpmix2 libevent-core-2.1-7 libevent-pthreads-2.1-7
  libfabric1 libibverbs1 librdmacm1 libpsm2-2 libpsm-infinipath1 libucx0 libcmocka0)

pack() {
  local builddir=${1:-build-cuda} archive=${2:-.gpu-pack.tar.xz}
  [ -f "$builddir/build.ninja" ] || die "$builddir is not a meson build dir"
  [ -x "$builddir/tests/gpu/test_gpu_ops" ] || die "$builddir has no tests/gpu/test_gpu_ops (CUDA off?)"
  local stage
  stage=$(mktemp -d)
  mkdir -p "$stage/bin" "$stage/lib"
  # every ELF executable of the build dir, keeping its relative path
  (cd "$builddir" && find . -type f -perm -u+x ! -path './meson-*' ! -name '*.so*' -print0) |
    while IFS= read -r -d '' f; do
      if head -c 4 "$builddir/$f" | grep -q 'ELF'; then
        mkdir -p "$stage/bin/$(dirname "$f")"
        cp "$builddir/$f" "$stage/bin/$f"
      fi
    done
  for p in "${pack_pkgs[@]}"; do
    local deb
    deb=$(find /var/cache/apt/archives -maxdepth 1 -name "${p}_*_amd64.deb" | sort | tail -n1)
    if [ -n "$deb" ]; then
      dpkg -x "$deb" "$stage/lib"
    elif dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
      { dpkg -L "$p" | grep -E '\.so(\.[0-9]+)*$' || true; } | while read -r f; do
        mkdir -p "$stage/lib$(dirname "$f")"
        cp -a "$f" "$stage/lib$f"
      done
    else
      die "package $p: no .deb in /var/cache/apt/archives and not installed"
    fi
  done
  rm -rf "$stage/lib/usr/share"
  {
    echo "moerun gpu pack, $(date -u +%FT%TZ), built on $(uname -n) ($(uname -sr))"
    echo "build dir: $(cd "$builddir" && pwd)"
    /usr/local/cuda/bin/nvcc --version | tail -n 2
    echo "packages: ${pack_pkgs[*]}"
    (cd "$stage" && find bin -type f | sort)
  } >"$stage/MANIFEST"
  tar -C "$stage" -cJf "$archive" .
  rm -rf "$stage"
  local bytes
  bytes=$(stat -c %s "$archive")
  echo "gpu-run: wrote $archive ($((bytes / 1024 / 1024)) MiB)"
  [ "$bytes" -lt $((64 * 1024 * 1024)) ] || die "$archive is over 64 MiB: the device tool will not carry it"
}

# ---- run (GPU machine) ---------------------------------------------------------
gpu_ops=(memory matmul rmsnorm rope softmax swiglu moe_gate expert_ffn mla_absorbed mla_naive)
bf16_ops=(matmul expert_ffn mla_absorbed mla_naive)

run() {
  local archive=.gpu-pack.tar.xz quick=()
  for a in "$@"; do
    case "$a" in
      --quick) quick=(--quick) ;;
      *) archive=$a ;;
    esac
  done
  [ -f "$archive" ] || die "no archive $archive (make it with: bash scripts/gpu-run.sh pack)"
  local out=${OUT:-./gpu-run-out} pack=/tmp/moerun-gpu-pack
  mkdir -p "$out"
  rm -rf "$pack" && mkdir -p "$pack"
  tar -C "$pack" -xJf "$archive"
  local libdirs
  libdirs=$(find "$pack/lib" -name '*.so*' -printf '%h\n' | sort -u | tr '\n' ':')
  export LD_LIBRARY_PATH="${libdirs}/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  # CUDA 13 runtime libraries elsewhere (e.g. PyTorch's pip wheels) when the
  # toolkit directory lacks them
  for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13; do
    if [ ! -e "/usr/local/cuda/lib64/$lib" ] && ! ldconfig -p | grep -q "$lib"; then
      local dir
      dir=$(find /usr/local /opt /usr/lib -name "$lib" -printf '%h\n' 2>/dev/null | head -n1 || true)
      if [ -n "$dir" ]; then LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$dir"; fi
    fi
  done
  export MOERUN_REQUIRE_GPU=1
  local tests="$pack/bin/tests/gpu/test_gpu_ops" bench="$pack/bin/bench/gpu/moerun-bench-gpu"
  {
    cat "$pack/MANIFEST"
    echo "--- machine"
    uname -a
    nvidia-smi || echo "nvidia-smi failed"
    nvcc --version 2>&1 | tail -n 2 || true
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    echo "--- unresolved libraries (ldd), none expected for the two gpu binaries"
    for b in "$tests" "$bench"; do
      ldd "$b" | grep "not found" | sed "s|^|$(basename "$b"): |" || true
    done
  } >"$out/env.txt" 2>&1
  cat "$out/env.txt"

  local failed=() passed=0
  : >"$out/gpu-tests.log"
  run_test() {
    local rc=0
    echo "=== test_gpu_ops $*" >>"$out/gpu-tests.log"
    timeout 300 "$tests" "$@" >>"$out/gpu-tests.log" 2>&1 || rc=$?
    echo "=== exit $rc" >>"$out/gpu-tests.log"
    if [ "$rc" -eq 0 ]; then passed=$((passed + 1)); else failed+=("$* (exit $rc)"); fi
  }
  for op in "${gpu_ops[@]}"; do run_test "$op"; done
  for op in "${bf16_ops[@]}"; do run_test "$op" --bf16; done

  local bench_rc=0
  timeout 540 "$bench" "${quick[@]}" --json "$out/bench-gpu.json" >"$out/bench-gpu.txt" 2>&1 ||
    bench_rc=$?
  cat "$out/bench-gpu.txt"

  echo "--- summary"
  echo "gpu tests: $passed passed, ${#failed[@]} failed (log: $out/gpu-tests.log)"
  for f in "${failed[@]}"; do echo "  FAILED: test_gpu_ops $f"; done
  echo "failed checks: $(grep -c '^FAIL' "$out/gpu-tests.log" || true)"
  echo "moerun-bench-gpu: exit $bench_rc"
  [ "${#failed[@]}" -eq 0 ] && [ "$bench_rc" -eq 0 ]
}

case "${1:-}" in
  pack) shift; pack "$@" ;;
  run) shift; run "$@" ;;
  *) echo "usage: $0 pack [BUILDDIR] [ARCHIVE] | run [ARCHIVE] [--quick]" >&2; exit 2 ;;
esac
