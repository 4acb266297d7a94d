#!/usr/bin/env bash
# launcher_dry_run.sh LAUNCHER — launch/moerun-cluster builds one MPMD mpirun
# line (role order, -np counts, root / recovery / single-host flags) and
# rejects bad flags with exit 2 and a message, before starting anything.
set -uo pipefail
launcher=$1
work=$(mktemp -d "${TMPDIR:-/tmp}/moerun-launch-XXXXXX")
trap 'rm -rf "$work"' EXIT
failures=0
fail() { echo "FAIL $*"; failures=$((failures+1)); }
ok() { echo "ok   $*"; }

# expect_usage NAME PATTERN ARGS... : exit 2 and PATTERN (grep -E) on stderr
expect_usage() {
  local name=$1 pattern=$2; shift 2
  local err rc
  err=$("$launcher" "$@" 2>&1 >/dev/null); rc=$?
  if [ $rc -ne 2 ]; then fail "$name: exit $rc, expected 2 ($err)"
  elif ! grep -Eq -- "$pattern" <<<"$err"; then fail "$name: message does not match /$pattern/: $err"
  else ok "$name: $(head -n1 <<<"$err")"; fi
}

# ---- a dry run: the MPMD pieces in role order
echo '{"id":"a","prompt_ids":[1],"max_new_tokens":2}' > "$work/req.jsonl"
line=$(MOERUN_BUILD_DIR=/opt/b "$launcher" --prefill 2 --decode 3 --expert 4 \
       --requests "$work/req.jsonl" --out "$work/out.jsonl" --kv-blocks 64 --attn naive \
       --request-timeout 30 --dry-run -- --tag-output)
rc=$?
[ $rc -eq 0 ] || fail "dry run: exit $rc"
echo "dry run: $line"
# words of the line, in order
read -r -a words <<<"$line"
[ "${words[0]}" = mpirun ] || fail "dry run: does not start with mpirun"
# position of the first occurrence of a word at or after index $2
pos() { local i; for ((i=$2; i<${#words[@]}; i++)); do [ "${words[$i]}" = "$1" ] && { echo $i; return; }; done; echo -1; }
c=$(pos /opt/b/coordinator/moerun-coordinator 0)
p=$(pos /opt/b/prefill_node/moerun-prefill 0)
d=$(pos /opt/b/decode_node/moerun-decode 0)
e=$(pos /opt/b/expert_node/moerun-expert 0)
if [ "$c" -gt 0 ] && [ "$p" -gt "$c" ] && [ "$d" -gt "$p" ] && [ "$e" -gt "$d" ]; then
  ok "role order coordinator < prefill < decode < expert"
else
  fail "role order: coordinator@$c prefill@$p decode@$d expert@$e"
fi
# the app context of the executable at index $1: from the nearest -np before
# it up to the executable (must not cross a ':')
context_of() { local i=$1; while [ $i -gt 0 ] && [ "${words[$i]}" != -np ] && [ "${words[$i]}" != : ]; do i=$((i-1)); done; echo "${words[*]:$i:$(($1-i+1))}"; }
expect_np() { # exe index, count
  local ctx; ctx=$(context_of "$1")
  if [[ "$ctx" == "-np $2 "* ]]; then ok "-np $2 starts the context of ${words[$1]##*/}"
  else fail "expected '-np $2' to start the context: $ctx"; fi
  # the single-host environment reaches every context (mpirun's -x is per context)
  for x in UCX_TLS=posix,self UCX_POSIX_ERROR_HANDLING=y UCX_KEEPALIVE_INTERVAL=100ms \
           UCX_KEEPALIVE_NUM_EPS=inf OPENBLAS_NUM_THREADS=1; do
    grep -qF -- "-x $x" <<<"$ctx" || fail "no '-x $x' in the context of ${words[$1]##*/}: $ctx"
  done
}
expect_np "$c" 1; expect_np "$p" 2; expect_np "$d" 3; expect_np "$e" 4
[ "$(grep -o ' : ' <<<"$line" | wc -l)" -eq 3 ] || fail "expected 3 ':' separators: $line"
has() { grep -qF -- "$1" <<<"$line" && ok "has '$1'" || fail "missing '$1' in: $line"; }
if [ "$(id -u)" = 0 ]; then has "--allow-run-as-root"; fi
has "--oversubscribe"
has "--enable-recovery"
has "--mca async_mpi_finalize 1"
has "-x UCX_TLS=posix,self"
has "-x UCX_POSIX_ERROR_HANDLING=y"
has "-x UCX_KEEPALIVE_INTERVAL=100ms"
has "-x OPENBLAS_NUM_THREADS=1"
has "--mca oob_tcp_if_include lo"
has "--tag-output"
has "--requests $work/req.jsonl"
has "--status-file "
# extra mpirun args come before the first app context
[ "$(pos --tag-output 0)" -lt "$(pos -np 0)" ] || fail "extra mpirun args not before the app contexts"
# every role gets the role options; only the coordinator gets --requests/--status-file
n_kv=$(grep -o -- "--kv-blocks 64" <<<"$line" | wc -l)
[ "$n_kv" -eq 4 ] && ok "role options passed to all 4 roles" || fail "--kv-blocks 64 appears $n_kv times"
[ "$(grep -o -- "--status-file" <<<"$line" | wc -l)" -eq 1 ] || fail "--status-file not coordinator-only"
[ "$(pos --requests "$c")" -lt "$p" ] || fail "--requests not in the coordinator's app context"

# ---- hostfile mode: slots in role order, no forced shared memory
printf 'localhost slots=8\n' > "$work/hosts"
hline=$(MOERUN_BUILD_DIR=/opt/b "$launcher" --hostfile "$work/hosts" --dry-run)
grep -qF -- "--hostfile $work/hosts --map-by slot" <<<"$hline" && ok "hostfile: --map-by slot" \
  || fail "hostfile line: $hline"
grep -qF -- "UCX_TLS" <<<"$hline" && fail "hostfile mode forces UCX_TLS: $hline" || ok "hostfile: UCX_TLS not forced"

# ---- default build dir: the copy in the build tree finds its siblings
self_dir=$(cd "$(dirname "$launcher")" && pwd)
if [ -d "$self_dir/../meson-info" ]; then
  dline=$(env -u MOERUN_BUILD_DIR "$launcher" --dry-run)
  grep -qF -- "$(cd "$self_dir/.." && pwd)/coordinator/moerun-coordinator" <<<"$dline" \
    && ok "build-dir copy finds the executables next to it" || fail "default build dir: $dline"
fi

# ---- bad flags: exit 2 with a message, nothing started
expect_usage unknown_flag "unknown flag '--frobnicate'" --frobnicate 3 --dry-run
expect_usage prefill_zero "--prefill: expected a positive integer, got '0'" --prefill 0 --dry-run
expect_usage decode_negative "--decode: expected a positive integer" --decode -1 --dry-run
expect_usage expert_not_a_number "--expert: expected a positive integer, got 'two'" --expert two --dry-run
expect_usage missing_value "--decode: missing value" --dry-run --decode
expect_usage missing_requests "--requests $work/nope.jsonl: no such readable file" --requests "$work/nope.jsonl" --dry-run
expect_usage missing_model "--model $work/nomodel: not a directory" --model "$work/nomodel" --dry-run
expect_usage model_without_config "no readable config.json" --model "$work" --dry-run
expect_usage missing_hostfile "--hostfile" --hostfile "$work/nohosts" --dry-run
expect_usage out_dir_missing "--out $work/no/dir/out.jsonl: directory" --out "$work/no/dir/out.jsonl" --dry-run
expect_usage bad_attn "--attn: expected absorb or naive" --attn flash --dry-run
expect_usage bad_kv_blocks "--kv-blocks: expected a positive integer" --kv-blocks 1.5 --dry-run
expect_usage bad_timeout "--request-timeout: expected a number" --request-timeout soon --dry-run
expect_usage stray_argument "unexpected argument 'extra'" extra --dry-run
expect_usage status_file_reserved "--status-file is set by" --status-file /tmp/x --dry-run
# without --dry-run too: validation happens before anything starts
expect_usage prefill_zero_real "--prefill: expected a positive integer" --prefill 0

# ---- the status file decides the exit code (a fake mpirun stands in)
mkdir -p "$work/bin" "$work/build/coordinator" "$work/build/prefill_node" "$work/build/decode_node" "$work/build/expert_node"
for exe in coordinator/moerun-coordinator prefill_node/moerun-prefill decode_node/moerun-decode expert_node/moerun-expert; do
  printf '#!/bin/sh\nexit 0\n' > "$work/build/$exe"; chmod +x "$work/build/$exe"
done
cat > "$work/bin/mpirun" <<'FAKE'
#!/usr/bin/env bash
# fake mpirun: writes FAKE_STATUS (if set) to the coordinator's --status-file, exits 0
while [ $# -gt 0 ]; do
  if [ "$1" = --status-file ]; then f=$2; fi; shift
done
[ -n "${FAKE_STATUS:-}" ] && printf '%b' "$FAKE_STATUS" > "$f"
exit 0
FAKE
chmod +x "$work/bin/mpirun"
run_fake() { PATH="$work/bin:$PATH" MOERUN_BUILD_DIR="$work/build" FAKE_STATUS="$1" "$launcher" 2>"$work/err" >/dev/null; }
run_fake '0\n'; rc=$?
[ $rc -eq 0 ] && ok "status 0 → exit 0" || fail "status 0 → exit $rc"
run_fake '1\n2 of 8 requests failed\n'; rc=$?
if [ $rc -eq 1 ] && grep -q "2 of 8 requests failed" "$work/err"; then ok "status 1 → exit 1 with the reason"
else fail "status 1 → exit $rc: $(cat "$work/err")"; fi
run_fake ''; rc=$?
if [ $rc -eq 1 ] && grep -q "no status file" "$work/err"; then ok "no status file → exit 1"
else fail "missing status → exit $rc: $(cat "$work/err")"; fi

if [ $failures -gt 0 ]; then echo "$failures failures"; exit 1; fi
echo "all launcher checks passed"
