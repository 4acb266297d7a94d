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
#    librdmacm1, libpsm2-2, libpsm-infinipath1, openmpi-bin/-common, libnuma1,
#    libudev1, libmunge2, libnl-3/-route-3, ibverbs-providers, libatomic1),
#    UCX (libucx0, ucx-utils; libgomp1 for ucx_perftest), cmocka (libcmocka0).
#    Checked 2026-12-07 in a mount namespace that hides every system library
#    a CUDA container lacks (ldd -r of every packed ELF: nothing unresolved;
#    cpu/devsim clusters ran through the packed mpirun).
# 2. On the GPU machine (device tool: carry [".gpu-pack.tar.xz"]), repo root:
#      bash scripts/gpu-run.sh run [ARCHIVE] [--quick] [--only STAGES]
#    Unpacks to /tmp/moerun-gpu-pack (once per archive), sets LD_LIBRARY_PATH,
#    relocates the packed Open MPI (OPAL_PREFIX, its packed mca-params),
#    PMIx (its component path) and UCX (UCX_MODULE_DIR), sets
#    MOERUN_REQUIRE_GPU=1 (no GPU = FAIL, never a skip) and runs the stages
#    (comma list; default all). The device tool kills a command at 600 s:
#    steps stop starting (the last is shortened) at GPU_RUN_BUDGET_S (570),
#    so the summary always prints; split a session with --only:
#      tests       test_gpu_ops OP for every op (+ --bf16 GEMM ops), NCCL plane
#      engine      tests/engine/check_backend.py: generate --backend cuda vs cpu
#                  (fp32: same tokens greedy and sampled, logits within 1e-3;
#                  bf16 against the CPU's bf16 emulation, tolerance)
#      cluster     tests/cluster/check_cluster.py --backend cuda, 1P1D1E and
#                  2P1D2E, all ranks sharing the GPU, vs generate on cpu; the
#                  sampled requests on the decode rank's GPU sampler; and
#                  --ep-plane nccl (refused on one shared GPU, with a message);
#                  --route-plane nccl 1P2D2E (pairs on one GPU refused: UCX, same tokens)
#      transport   moerun bench transport --staged cuda (GPU->host->UCX->GPU)
#      bench-gpu   moerun-bench-gpu (MLA decode, grouped experts)
#      bench-layer moerun bench layer at DeepSeek-V3 shapes (1 dense + 1 MoE), fp32
#      bench-layer-bf16  the same with --precision bf16 --kv-dtype bf16 (as served)
#    Writes env.txt and one log per stage to $OUT (default ./gpu-run-out;
#    JSON results folded into their stage's log: the tool returns <= 8
#    files) and prints a summary. Exit 0 only when every step passed.
set -euo pipefail

die() { echo "gpu-run: $*" >&2; exit 1; }

# ---- pack (build machine) -----------------------------------------------------
pack_pkgs=(libopenblas0-pthread libgfortran5 libquadmath0 libcjson1 libprotobuf-c1
  libopenmpi3 libhwloc15 libpmix2 libevent-core-2.1-7 libevent-pthreads-2.1-7
  libfabric1 libibverbs1 librdmacm1 libpsm2-2 libpsm-infinipath1 libucx0 libcmocka0
  openmpi-bin openmpi-common ucx-utils
  libnuma1 libudev1 libmunge2 libnl-3-200 libnl-route-3-200 ibverbs-providers libgomp1 libatomic1)

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
    deb=$(find /var/cache/apt/archives -maxdepth 1 \( -name "${p}_*_amd64.deb" -o \
      -name "${p}_*_all.deb" \) | sort | tail -n1)
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
  # SONAME link Debian makes with update-alternatives (postinst), not in the .deb
  ln -sf libpsm_infinipath.so.1.16 "$stage/lib/usr/lib/libpsm1/libpsm_infinipath.so.1"
  # keep Open MPI's help texts (its error messages), drop the rest of share/
  find "$stage/lib/usr/share" -mindepth 1 -maxdepth 1 ! -name openmpi -exec rm -rf {} +
  # the real model config for `moerun bench layer` (../shared is not carried)
  mkdir -p "$stage/models"
  cp ../shared/models/deepseek-ai--DeepSeek-V3.config.json "$stage/models/"
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
gpu_ops=(memory movement matmul matmul_strided rmsnorm rope softmax swiglu moe_gate expert_ffn
  experts_grouped mla_absorbed mla_decode_paged mla_naive sample_rows)
bf16_ops=(matmul matmul_strided expert_ffn experts_grouped mla_absorbed mla_naive mla_decode_paged)
all_stages=tests,engine,cluster,transport,bench-gpu,bench-layer-bf16,bench-layer

run() {
  local archive=.gpu-pack.tar.xz quick=() stages=$all_stages
  while [ $# -gt 0 ]; do
    case "$1" in
      --quick) quick=(--quick) ;;
      --only) stages=$2; shift ;;
      *) archive=$1 ;;
    esac
    shift
  done
  local s
  for s in ${stages//,/ }; do # a typo would run nothing and exit 0
    [[ ",$all_stages," == *",$s,"* ]] || die "unknown stage '$s' (stages: $all_stages)"
  done
  [ -f "$archive" ] || die "no archive $archive (make it with: bash scripts/gpu-run.sh pack)"
  local out=${OUT:-./gpu-run-out} pack=/tmp/moerun-gpu-pack
  mkdir -p "$out"
  if [ ! -f "$pack/MANIFEST" ] || [ "$archive" -nt "$pack/MANIFEST" ]; then
    rm -rf "$pack" && mkdir -p "$pack"
    tar -C "$pack" -xJf "$archive"
    touch "$pack/MANIFEST" # tar keeps the pack-time mtime: else every run re-extracts
  fi
  local libdirs
  libdirs=$(find "$pack/lib" -name '*.so*' -printf '%h\n' | sort -u | tr '\n' ':')
  export LD_LIBRARY_PATH="${libdirs}/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  # CUDA 13 runtime libraries elsewhere (e.g. PyTorch's pip wheels) when the
  # toolkit directory lacks them
  for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libnccl.so.2; do
    if [ ! -e "/usr/local/cuda/lib64/$lib" ] && ! ldconfig -p | grep -q "$lib"; then
      local dir
      dir=$(find /usr/local /opt /usr/lib -name "$lib" -printf '%h\n' 2>/dev/null | head -n1 || true)
      if [ -n "$dir" ]; then LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$dir"; fi
    fi
  done
  # the packed Open MPI and UCX, relocated (OPAL_PREFIX; tried on the build
  # machine with the system copies hidden in a mount namespace)
  export OPAL_PREFIX="$pack/lib/usr" UCX_MODULE_DIR="$pack/lib/usr/lib/x86_64-linux-gnu/ucx"
  # PMIx ignores OPAL_PREFIX: its components (pcompress, prm) live at a compiled-in path.
  # Open MPI's sysconfdir (/etc/openmpi) is not relocated either: read the packed
  # Debian defaults (pml ^ucx, mtl ^ofi, btl ^uct,openib,ofi) as on the build machine.
  export PMIX_MCA_mca_base_component_path="$pack/lib/usr/lib/x86_64-linux-gnu/pmix2/lib/pmix"
  export OMPI_MCA_mca_base_param_files="$pack/lib/etc/openmpi/openmpi-mca-params.conf"
  export PYTHONUNBUFFERED=1 # a step killed by timeout keeps its Python output
  ln -sf orterun "$pack/lib/usr/bin/mpirun"
  export PATH="$pack/lib/usr/bin:$PATH"
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  export MOERUN_REQUIRE_GPU=1 MOERUN_BUILD_DIR="$pack/bin"
  local bin="$pack/bin" tests="$pack/bin/tests/gpu/test_gpu_ops"
  {
    cat "$pack/MANIFEST"
    echo "--- machine"
    uname -a
    nvidia-smi || echo "nvidia-smi failed"
    nvcc --version 2>&1 | tail -n 2 || true
    python3 --version || true
    ldd --version | head -n 1 || true
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    echo "--- unresolved libraries and symbols (ldd -r), none expected"
    find "$bin" "$pack/lib/usr/bin" -type f -perm -u+x | while read -r b; do
      ldd -r "$b" 2>&1 | grep -E "not found|undefined symbol" | sed "s|^|$(basename "$b"): |" || true
    done
    echo "--- mpirun smoke test (dlopen'ed MCA/PMIx components), expect 2 lines"
    timeout -k 5 60 mpirun --oversubscribe -np 2 uname -n 2>&1 || echo "mpirun smoke test failed"
  } >"$out/env.txt" 2>&1
  head -n 60 "$out/env.txt"

  local failed=() passed=0
  # the device tool kills a command at 600 s: stop starting steps (and shorten the
  # last one) so the summary is always printed; GPU_RUN_BUDGET_S=seconds overrides.
  # Counted from the script's start (bash's SECONDS): the unpack, env.txt and its
  # mpirun smoke test (up to 65 s) are inside the device tool's 600 s too.
  local deadline=${GPU_RUN_BUDGET_S:-570}
  step() { # step NAME LOG TIMEOUT CMD...: run, append to LOG, count
    local name=$1 log=$2 limit=$3 rc=0 left=$((deadline - SECONDS))
    shift 3
    if [ "$left" -lt 30 ]; then
      echo "$name: skipped (${left}s left of the budget)"; failed+=("$name (skipped: budget)"); return 0
    fi
    [ "$limit" -le $((left - 15)) ] || limit=$((left - 15))
    echo "=== $name: $*" >>"$log"
    timeout -k 10 "$limit" "$@" >>"$log" 2>&1 || rc=$?
    echo "=== exit $rc" >>"$log"
    echo "$name: exit $rc"
    if [ "$rc" -eq 0 ]; then passed=$((passed + 1)); else failed+=("$name (exit $rc)"); fi
  }
  has() { [[ ",$stages," == *",$1,"* ]]; }

  if has tests; then
    # each op takes seconds: a hang must not eat the call
    for op in "${gpu_ops[@]}"; do step "op $op" "$out/gpu-tests.log" 90 "$tests" "$op"; done
    for op in "${bf16_ops[@]}"; do step "op $op bf16" "$out/gpu-tests.log" 90 "$tests" "$op" --bf16; done
    step "nccl plane" "$out/gpu-tests.log" 120 "$bin/tests/gpu/test_nccl_plane"
  fi
  if has engine; then # generate --backend cuda against cpu
    step "generate fp32" "$out/engine.log" 400 python3 tests/engine/check_backend.py \
      --moerun "$bin/moerun" --backend cuda --precision fp32
    step "generate bf16" "$out/engine.log" 400 python3 tests/engine/check_backend.py \
      --moerun "$bin/moerun" --backend cuda --precision bf16
  fi
  if has cluster; then # every rank on the one GPU, --precision fp32
    for layout in 1,1,1 2,1,2; do
      step "cluster $layout" "$out/cluster.log" 400 python3 tests/cluster/check_cluster.py \
        --build "$bin" --source . --layout "$layout" --backend cuda
    done
    step "cluster sampled on GPU" "$out/cluster.log" 400 python3 tests/cluster/check_cluster.py \
      --build "$bin" --source . --layout 1,2,2 --backend cuda --no-logits --sampled
    step "cluster nccl ep plane" "$out/cluster.log" 300 python3 tests/cluster/check_faults.py \
      --build "$bin" --source . nccl-ep-on-gpus
    step "cluster route plane nccl" "$out/cluster.log" 400 python3 tests/cluster/check_cluster.py \
      --build "$bin" --source . --layout 1,2,2 --backend cuda --route-plane nccl
  fi
  if has transport; then
    MOERUN_BENCH_TRANSPORT_BIN="$bin/bench/moerun-bench-transport" \
      step "bench transport staged" "$out/bench-transport.txt" 300 launch/moerun-bench-transport \
      --sizes 1,4,64 --trials 3 --staged cuda --perftest-bin "$pack/lib/usr/bin/ucx_perftest"
  fi
  if has bench-gpu; then # one process per precision: a fault of the (never run) bf16
    # tensor-core MLA kernel is sticky and would end the process, not just its rows
    step "bench gpu fp32" "$out/bench-gpu.txt" 240 "$bin/bench/gpu/moerun-bench-gpu" "${quick[@]}" \
      --precision fp32 --json "$out/bench-gpu.json"
    step "bench gpu bf16" "$out/bench-gpu.txt" 240 "$bin/bench/gpu/moerun-bench-gpu" "${quick[@]}" \
      --precision bf16 --json "$out/bench-gpu-bf16.json"
  fi
  if has bench-layer-bf16; then # DeepSeek-V3 shapes, 1 dense + 1 MoE layer, BF16 weights
    # (~30 GB on the GPU; as served): before fp32, so a short budget cuts the fp32 run
    step "bench layer bf16" "$out/bench-layer-bf16.txt" 540 "$bin/moerun" bench layer \
      --config "$pack/models/deepseek-ai--DeepSeek-V3.config.json" --backend cuda \
      --precision bf16 --kv-dtype bf16 --batches 1,8,32,64,128,256 --context 1024 --steps 5 \
      --json "$out/bench-layer-bf16.json"
  fi
  if has bench-layer; then # the same with fp32 weights (~56 GB)
    step "bench layer fp32" "$out/bench-layer.txt" 540 "$bin/moerun" bench layer \
      --config "$pack/models/deepseek-ai--DeepSeek-V3.config.json" --backend cuda \
      --batches 1,8,32,64,128,256 --context 1024 --steps 5 --json "$out/bench-layer.json"
  fi

  # the device tool returns at most 8 files from $OUT: fold each JSON into its .txt
  local j
  for j in "$out"/*.json; do
    [ -f "$j" ] || continue
    local txt=${j%.json}.txt
    case ${j##*/} in bench-gpu-*.json) txt=$out/bench-gpu.txt ;; esac
    { echo "--- ${j##*/}"; cat "$j"; } >>"$txt" && rm -f "$j"
  done
  echo "--- summary ($stages)"
  echo "steps: $passed passed, ${#failed[@]} failed (logs in $out)"
  for f in "${failed[@]}"; do echo "  FAILED: $f"; done
  [ "${#failed[@]}" -eq 0 ]
}

case "${1:-}" in
  pack) shift; pack "$@" ;;
  run) shift; run "$@" ;;
  *) echo "usage: $0 pack [BUILDDIR] [ARCHIVE] | run [ARCHIVE] [--quick] [--only STAGES]" >&2
     exit 2 ;;
esac
