#!/bin/bash
# run_mpi.sh — start one transport test under mpirun, on loopback, bounded.
#
#   run_mpi.sh [--ucx-default] [--no-recovery] [--retry-once] NP "PASSING RANKS" BINARY [ARGS...]
#
# --retry-once (the rank-death tests only): a failed run is reported and run
# once more. Reason, measured 2026-11-23: in ~5 % of runs the two survivors of
# a SIGKILLed rank stop receiving from each other although both keep polling
# (gdb: both in tp_wait; heartbeats between them stop arriving) — consistent
# with UCX 1.13's shared-memory FIFO left mid-write by the killed process. It
# is a known transport limitation (docs/STATUS.md), not hidden: the first
# attempt's output stays in the test log.
#
# Uses the launcher's single-host recipe (shared/TOOLCHAIN.md): UCX_TLS=posix,self,
# UCX_POSIX_ERROR_HANDLING=y, 100 ms keepalive, mpirun --enable-recovery --mca
# async_mpi_finalize 1. --ucx-default leaves UCX's environment alone;
# --no-recovery runs plain mpirun (then its exit status must be 0 as well).
# Passes when exactly the listed ranks wrote $TP_TEST_OUT/rank.<r>.ok.
set -u
ucx_default=0 recovery=1
while [ $# -gt 0 ]; do
  case $1 in
    --ucx-default) ucx_default=1; shift ;;
    --no-recovery) recovery=0; shift ;;
    --retry-once)
      shift
      if "$0" "$@"; then exit 0; fi
      echo "run_mpi.sh: FIRST ATTEMPT FAILED (known UCX shared-memory wedge after a SIGKILL," \
           "docs/STATUS.md); running once more" >&2
      exec "$0" "$@" ;;
    *) break ;;
  esac
done
if [ $# -lt 3 ]; then echo "usage: $0 [--ucx-default] [--no-recovery] NP 'RANKS' BINARY [ARGS...]" >&2; exit 2; fi
np=$1 expect=$2
shift 2

out=$(mktemp -d "${TMPDIR:-/tmp}/tp-test.XXXXXX")
trap 'rm -rf "$out"' EXIT
export TP_TEST_OUT=$out
export OMPI_MCA_oob_tcp_if_include=lo OMPI_MCA_btl_tcp_if_include=lo UCX_NET_DEVICES=lo
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OPENBLAS_NUM_THREADS=1

flags=(--oversubscribe -x TP_TEST_OUT -x UCX_NET_DEVICES)
[ $recovery = 1 ] && flags+=(--enable-recovery --mca async_mpi_finalize 1)
if [ $ucx_default = 0 ]; then
  export UCX_TLS=posix,self UCX_POSIX_ERROR_HANDLING=y UCX_KEEPALIVE_INTERVAL=100ms UCX_KEEPALIVE_NUM_EPS=inf
  flags+=(-x UCX_TLS -x UCX_POSIX_ERROR_HANDLING -x UCX_KEEPALIVE_INTERVAL -x UCX_KEEPALIVE_NUM_EPS)
else
  unset UCX_TLS UCX_POSIX_ERROR_HANDLING UCX_KEEPALIVE_INTERVAL UCX_KEEPALIVE_NUM_EPS
fi

start=$(date +%s.%N)
timeout -k 5 120 mpirun "${flags[@]}" -np "$np" "$@"
rc=$?
awk -v rc="$rc" -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "run_mpi.sh: mpirun exit %d after %.1f s\n", rc, e - s }'
if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then echo "run_mpi.sh: TIMEOUT (mpirun killed)" >&2; exit 1; fi
if [ $recovery = 0 ] && [ $rc -ne 0 ]; then echo "run_mpi.sh: mpirun failed ($rc)" >&2; exit 1; fi

fail=0
for r in $(seq 0 $((np - 1))); do
  want=0
  for e in $expect; do [ "$e" = "$r" ] && want=1; done
  have=0
  [ -e "$out/rank.$r.ok" ] && have=1
  if [ $want -ne $have ]; then
    echo "run_mpi.sh: rank $r $([ $want = 1 ] && echo 'did not pass' || echo 'passed but was expected not to')" >&2
    fail=1
  fi
done
exit $fail
