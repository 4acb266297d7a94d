#!/usr/bin/python3
"""check_plan.py — balancing hot experts with redundant replicas pays off and
changes no output.

  check_plan.py --build B --source S

Runs the built-in tiny model on 40 requests with 3 expert ranks (round-robin
placement), feeds the run's summary to `moerun plan placement` (3 redundant
replicas per layer), runs again with that placement, and checks: every
request completes in both runs with the same tokens, the plan lists every
expert of every MoE layer with distinct expert ranks, and the measured
max/mean tokens per expert rank is lower with the plan than with round robin.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile


def run_cluster(source, build, req, extra, out, summ):
    env = dict(os.environ, MOERUN_BUILD_DIR=build, MOERUN_CLUSTER_TIMEOUT="120")
    cmd = [os.path.join(source, "launch", "moerun-cluster"), "--expert", "3", "--requests", req,
           "--out", out, "--summary", summ] + extra
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    if r.returncode != 0:
        print(r.stderr[-3000:])
        raise SystemExit(f"FAIL: cluster exit {r.returncode}")
    s = json.load(open(summ))
    tokens = [r["tokens_processed"] for r in s["ranks"] if r["role"] == "expert"]
    return [json.loads(x) for x in open(out)], tokens


def imbalance(tokens):
    return max(tokens) * len(tokens) / sum(tokens)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--source", required=True)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="moerun-plan-") as work:
        req = os.path.join(work, "req.jsonl")
        with open(req, "w") as f:
            for i in range(40):
                f.write(json.dumps({"id": f"s{i}", "prompt_ids": [(i * 7 + j) % 256 for j in range(6)],
                                    "max_new_tokens": 30, "ignore_eos": True}) + "\n")
        p = lambda name: os.path.join(work, name)
        base, t0 = run_cluster(a.source, a.build, req, [], p("o1.jsonl"), p("s1.json"))
        plan = subprocess.run([os.path.join(a.build, "moerun"), "plan", "placement", "--summary",
                               p("s1.json"), "--expert-ranks", "3,4,5", "--redundant", "3",
                               "--out", p("placement.json")], capture_output=True, text=True)
        print(plan.stdout)
        if plan.returncode != 0:
            print(plan.stderr)
            return 1
        placement = json.load(open(p("placement.json")))
        failures = []
        for layer, experts in placement["layers"].items():
            if len(experts) != 16:
                failures.append(f"layer {layer}: {len(experts)} experts placed, want 16")
            for e, ranks in experts.items():
                if len(set(ranks)) != len(ranks) or not set(ranks) <= {3, 4, 5}:
                    failures.append(f"layer {layer} expert {e}: bad ranks {ranks}")
        planned, t1 = run_cluster(a.source, a.build, req, ["--placement", p("placement.json")],
                                  p("o2.jsonl"), p("s2.json"))
        for x, y in zip(base, planned):
            if x["finish_reason"] != "length" or x["output_ids"] != y["output_ids"]:
                failures.append(f"{x['id']}: {x['output_ids']} vs {y['output_ids']}")
        print(f"tokens per expert rank: round robin {t0} (max/mean {imbalance(t0):.3f}), "
              f"planned {t1} (max/mean {imbalance(t1):.3f})")
        if not imbalance(t1) < imbalance(t0):
            failures.append("the plan did not reduce the expert-rank load imbalance")
    for f in failures:
        print("FAIL:", f)
    print("PASS" if not failures else f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
