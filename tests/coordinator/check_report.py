#!/usr/bin/python3
"""moerun report reads a cluster run's results (and summary) and prints the
latency percentiles numpy would give, writes a well-formed SVG with one curve
per latency CDF plus the re-placement windows, and names the line of a
malformed results file.

    check_report.py --moerun BUILD/moerun
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import xml.dom.minidom


def percentile(values, p):  # numpy.percentile's default (linear)
    v = sorted(values)
    pos = p / 100 * (len(v) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--moerun", required=True)
    args = ap.parse_args()
    failures = []
    with tempfile.TemporaryDirectory(prefix="moerun-report-") as work:
        results = os.path.join(work, "out.jsonl")
        rows = []
        for i in range(40):
            rows.append({"id": f"r{i}", "output_ids": [1, 2, 3], "finish_reason": "length",
                         "error": "", "prompt_tokens": 5, "ttft_ms": 10.0 + (i * 7) % 13,
                         "tpot_ms": 2.0 + (i % 5) * 0.25, "e2e_ms": 50.0 + i})
        rows.append({"id": "bad", "output_ids": [], "finish_reason": "error",
                     "error": "lost expert rank 4", "prompt_tokens": 5, "ttft_ms": 0,
                     "tpot_ms": 0, "e2e_ms": 3.0})
        with open(results, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        summary = os.path.join(work, "summary.json")
        json.dump({"rebalance": {"epochs": [{"epoch": 1, "done_s": 0.5}],
                                 "windows": [{"end_s": 0.4, "tokens": 100, "measured_imbalance": 1.6},
                                             {"end_s": 0.8, "tokens": 90, "measured_imbalance": 1.1}]}},
                  open(summary, "w"))
        svg = os.path.join(work, "plots.svg")
        r = subprocess.run([args.moerun, "report", "--results", results, "--summary", summary,
                            "--svg", svg], capture_output=True, text=True, timeout=60)
        print(r.stdout, r.stderr)
        if r.returncode != 0:
            return 1
        if "41 requests, 40 completed, 1 failed" not in r.stdout:
            failures.append("request counts missing or wrong")
        ok = [x for x in rows if x["finish_reason"] != "error"]
        for name, key in (("TTFT", "ttft_ms"), ("TPOT", "tpot_ms"), ("E2E", "e2e_ms")):
            line = [l for l in r.stdout.splitlines() if l.split()[:1] == [name]]
            want = [percentile([x[key] for x in ok], p) for p in (50, 90, 99)]
            got = [float(v) for v in line[0].split()[2:5]] if line else []
            if len(got) != 3 or any(abs(g - w) > 0.006 for g, w in zip(got, want)):
                failures.append(f"{name}: printed {got}, numpy-style percentiles {want}")
        doc = xml.dom.minidom.parse(svg)  # raises on malformed XML
        n_lines = len(doc.getElementsByTagName("polyline"))
        if n_lines != 4:
            failures.append(f"{n_lines} curves in the SVG, expected 4 (3 CDFs + imbalance)")
        # a malformed line is named
        with open(results, "a") as f:
            f.write("{not json\n")
        r = subprocess.run([args.moerun, "report", "--results", results], capture_output=True,
                           text=True, timeout=60)
        if r.returncode != 1 or "out.jsonl:42:" not in r.stderr:
            failures.append(f"malformed line 42 not named (exit {r.returncode}): {r.stderr}")
        r = subprocess.run([args.moerun, "report", "--bogus", "x"], capture_output=True,
                           text=True, timeout=60)
        if r.returncode != 2:
            failures.append(f"unknown flag: exit {r.returncode}, expected 2")
    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
