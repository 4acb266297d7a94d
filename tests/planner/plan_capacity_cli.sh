#!/usr/bin/env bash
# plan_capacity_cli.sh MOERUN SHARED — `moerun plan capacity` end to end on a
# real config and trace (DeepSeek-V3 on H800, the Azure conversation trace):
# exit 0 with the table, the answer, the reference figures and the decode
# layout comparison (EP on decode vs disaggregated); --json
# written; bad flags exit 2 and a malformed trace exits 1, each with a
# message naming the problem; `moerun plan --help` lists both plans.
# Exits 77 (meson SKIP) when SHARED (../shared) is missing.
set -uo pipefail
moerun=$1
shared=$2
config=$shared/models/deepseek-ai--DeepSeek-V3.config.json
trace=$shared/data/traces/AzureLLMInferenceTrace_conv.csv
if [ ! -r "$config" ] || [ ! -r "$trace" ]; then
  echo "SKIP: $shared (models/, data/traces/) is missing"
  exit 77
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/moerun-capacity-XXXXXX")
trap 'rm -rf "$work"' EXIT
failures=0
fail() { echo "FAIL $*"; failures=$((failures+1)); }
ok() { echo "ok   $*"; }

args=(plan capacity --config "$config" --gpu h800 --trace "$trace" --ttft-p90-ms 2000 --tpot-p90-ms 50)

out=$("$moerun" "${args[@]}" --json "$work/plan.json" 2>&1); rc=$?
echo "$out"
if [ $rc -ne 0 ]; then fail "plan capacity: exit $rc"
else
  for pattern in '^## prefill' '^## decode' '<- answer' '^prefill: [0-9]+ nodes' \
                 '^decode: +[0-9]+ nodes' '^total: +[0-9]+ nodes' \
                 'reference: DeepSeek published +- +73\.7k' '^## assumptions' \
                 '^## decode layout: EP on decode' '^  EP on decode +2 +- +2 ' \
                 '^  disaggregated +[0-9]+ +[0-9]+ +[0-9]+ ' \
                 '^decode layout: (EP on decode|disaggregated) \([0-9]+ nodes vs ([0-9]+|none)\)$'; do
    grep -Eq -- "$pattern" <<<"$out" && ok "output has /$pattern/" || fail "output lacks /$pattern/"
  done
fi
if grep -q '"total_nodes"' "$work/plan.json" 2>/dev/null && grep -q '"rows"' "$work/plan.json" &&
   grep -q '"decode_layouts"' "$work/plan.json" && grep -q '"winner"' "$work/plan.json"; then
  ok "--json wrote the plan"
else
  fail "--json: $work/plan.json missing or incomplete"
fi

# expect NAME RC PATTERN ARGS... : exit RC and PATTERN (grep -E) on stderr
expect() {
  local name=$1 want=$2 pattern=$3; shift 3
  local err rc
  err=$("$moerun" "$@" 2>&1 >/dev/null); rc=$?
  if [ $rc -ne "$want" ]; then fail "$name: exit $rc, want $want: $err"
  elif ! grep -Eq -- "$pattern" <<<"$err"; then fail "$name: message lacks /$pattern/: $err"
  else ok "$name: $(head -n1 <<<"$err")"; fi
}
expect unknown_flag 2 "unknown flag '--frobnicate'" "${args[@]}" --frobnicate 1
expect unknown_gpu 2 "--gpu: expected one of h800\|h20\|h100\|h200, got 'h900'" \
  plan capacity --config "$config" --gpu h900 --trace "$trace" --ttft-p90-ms 2000 --tpot-p90-ms 50
expect bad_rate_scale 2 '--rate-scale: expected a number' "${args[@]}" --rate-scale -3
expect bad_dtype 2 '--weight-dtype: expected fp8 or bf16' "${args[@]}" --weight-dtype int4
expect missing_value 2 '--json: missing value' "${args[@]}" --json
expect missing_target 2 'are required' plan capacity --config "$config" --gpu h800 --trace "$trace"
expect efficiency_and_calibrate 2 'not both' "${args[@]}" --efficiency 0.5 --calibrate x.json
printf 'TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,374,44\n2023-11-16 18:15:47,12\n' \
  > "$work/bad.csv"
expect malformed_trace 1 "bad.csv:3: expected 3 comma-separated fields" \
  plan capacity --config "$config" --gpu h800 --trace "$work/bad.csv" --ttft-p90-ms 2000 --tpot-p90-ms 50
expect missing_trace 1 "$work/none.csv: cannot open" \
  plan capacity --config "$config" --gpu h800 --trace "$work/none.csv" --ttft-p90-ms 2000 --tpot-p90-ms 50
expect placement_still_there 2 'required' plan placement

# --svg: a well-formed SVG with the prefill TTFT curves and the decode step-time curve
rc=0; "$moerun" "${args[@]}" --svg "$work/plan.svg" >/dev/null 2>&1 || rc=$?
if [ $rc -eq 0 ] && /usr/bin/python3 -c "
import sys, xml.dom.minidom as m
d = m.parse(sys.argv[1]); n = len(d.getElementsByTagName('polyline'))
sys.exit(0 if n >= 5 else 1)" "$work/plan.svg"; then
  ok "--svg writes TTFT and TPOT plots"
else
  fail "--svg: exit $rc or not a well-formed SVG with >= 5 curves"
fi

help=$("$moerun" plan --help); rc=$?
if [ $rc -eq 0 ] && grep -q 'plan placement' <<<"$help" && grep -q 'plan capacity' <<<"$help"; then
  ok "plan --help lists placement and capacity"
else
  fail "plan --help: exit $rc: $help"
fi

[ $failures -eq 0 ] || { echo "$failures failure(s)"; exit 1; }
