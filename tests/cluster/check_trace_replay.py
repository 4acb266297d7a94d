#!/usr/bin/python3
"""A real production trace replayed through the cluster: `moerun trace
requests` turns the first rows of the Azure conversation trace into requests
(real arrival gaps, lengths capped for the tiny model), launch/moerun-cluster
serves them, and every request completes with exactly its max_new_tokens and
a TTFT. Exit 77 when ../shared (the traces) is not beside the checkout.

    check_trace_replay.py --build BUILD --source SRC
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--source", required=True)
    args = ap.parse_args()
    trace = os.path.join(args.source, "..", "shared", "data", "traces",
                         "AzureLLMInferenceTrace_conv.csv")
    if not os.path.exists(trace):
        print("SKIP: no", trace)
        return 77
    moerun = os.path.join(args.build, "moerun")
    env = dict(os.environ, MOERUN_BUILD_DIR=args.build, MOERUN_CLUSTER_TIMEOUT="240")
    with tempfile.TemporaryDirectory(prefix="moerun-replay-") as work:
        req = os.path.join(work, "req.jsonl")
        r = subprocess.run([moerun, "trace", "requests", "--trace", trace, "--limit", "24",
                            "--rate-scale", "4", "--max-prompt", "64", "--max-new", "12",
                            "--out", req], capture_output=True, text=True, timeout=60)
        print(r.stderr)
        if r.returncode != 0:
            return 1
        reqs = [json.loads(x) for x in open(req)]
        out, summ = os.path.join(work, "out.jsonl"), os.path.join(work, "summary.json")
        r = subprocess.run([os.path.join(args.source, "launch", "moerun-cluster"), "--prefill", "1",
                            "--decode", "1", "--expert", "2", "--requests", req, "--out", out,
                            "--summary", summ], capture_output=True, text=True, timeout=300,
                           env=env)
        print(r.stderr[-2500:])
        failures = []
        if r.returncode != 0:
            failures.append(f"launcher exit {r.returncode}")
        results = {x["id"]: x for x in map(json.loads, open(out))} if os.path.exists(out) else {}
        for q in reqs:
            res = results.get(q["id"])
            if not res or res["finish_reason"] != "length" or \
                    len(res["output_ids"]) != q["max_new_tokens"] or res["ttft_ms"] <= 0:
                failures.append(f"{q['id']}: {res}")
        gaps = [b["arrival_ms"] - a["arrival_ms"] for a, b in zip(reqs, reqs[1:])]
        if not gaps or min(gaps) < 0 or max(gaps) <= 0:
            failures.append("arrivals are not the trace's (non-decreasing, spread out)")
        s = json.load(open(summ)) if os.path.exists(summ) else {}
        print(f"replayed {len(reqs)} trace requests over {reqs[-1]['arrival_ms'] / 1e3:.1f} s: "
              f"TTFT p50 {s.get('ttft_ms', {}).get('p50', 0):.1f} ms, "
              f"TPOT p50 {s.get('tpot_ms', {}).get('p50', 0):.1f} ms")
    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
