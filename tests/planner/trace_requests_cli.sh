#!/usr/bin/env bash
# trace_requests_cli.sh MOERUN — `moerun trace requests` turns a trace into
# valid cluster requests (ids, lengths within the caps and the model's
# positions, non-decreasing arrivals scaled by --rate-scale), names a
# malformed row, and refuses unknown flags.
set -euo pipefail
moerun=$1
work=$(mktemp -d "${TMPDIR:-/tmp}/moerun-trace-XXXXXX")
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

cat >"$work/t.csv" <<'CSV'
TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:50.9951690,396,109
2023-11-16 18:15:51.1000000,12,0
CSV
"$moerun" trace requests --trace "$work/t.csv" --rate-scale 2 --max-prompt 100 --max-new 50 \
  --out "$work/r.jsonl" 2>"$work/err"
/usr/bin/python3 - "$work/r.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
assert [r["id"] for r in rows] == ["t0", "t1", "t2"], rows
assert [len(r["prompt_ids"]) for r in rows] == [100, 100, 12], "prompt caps"
assert [r["max_new_tokens"] for r in rows] == [44, 50, 1], "output caps (0 -> 1)"
assert all(0 <= t < 256 for r in rows for t in r["prompt_ids"]), "ids below vocab"
assert abs(rows[1]["arrival_ms"] - 2157.2895) < 0.01, rows[1]["arrival_ms"]  # 4.3146 s / 2
assert rows[0]["arrival_ms"] == 0 and rows[2]["arrival_ms"] > rows[1]["arrival_ms"]
print("ok: 3 requests, caps and scaled arrivals as expected")
PY
grep -q "2 prompts capped to 100" "$work/err" || fail "cap count not reported: $(cat "$work/err")"

printf 'TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,374\n' >"$work/bad.csv"
rc=0; "$moerun" trace requests --trace "$work/bad.csv" >/dev/null 2>"$work/err" || rc=$?
[ "$rc" = 1 ] || fail "malformed row: exit $rc, expected 1"
grep -q "bad.csv:2:" "$work/err" || fail "malformed row not named: $(cat "$work/err")"

rc=0; "$moerun" trace requests --trace "$work/t.csv" --bogus 1 >/dev/null 2>&1 || rc=$?
[ "$rc" = 2 ] || fail "unknown flag: exit $rc, expected 2"
echo "PASS"
