#!/usr/bin/python3
"""check_cluster.py — the disaggregated cluster returns what the single-process
engine returns.

Usage (meson runs it with /usr/bin/python3; a missing numpy FAILS, never skips):
  check_cluster.py --build BUILD_DIR --source SRC_DIR --layout P,D,E
                   [--placement hot2] [--preset tiny] [--n-requests 12]
                   [--kv-blocks 24] [--max-batch-tokens 32]

It synthesizes a model, writes a request set of different prompt lengths
(some longer than --max-batch-tokens so prefill chunks them; enough total KV
that the decode pool runs out and admission must queue), runs
launch/moerun-cluster with --logits-dir, then for every request runs
`moerun generate` alone and checks:
  * the cluster's output_ids equal generate's (greedy),
  * the logits at every position agree within 1e-4 (bf16 weights or KV: at
    least half of the positions, and the rest within 3e-2: the cluster batches
    tokens differently, its fp32 sums differ from generate's in the last bits,
    and an activation within that of a bfloat16 rounding midpoint rounds the
    other way — a 2^-8 step of one GEMM input — in that position and the KV
    rows it leaves; tokens must still be equal),
  * finish_reason is length, ttft/tpot/e2e are present, exit status is 0.
--placement hot2 first runs the layout once with round-robin placement, finds
the two hottest experts of each MoE layer from generate's routing... (we
approximate "hottest" from the coordinator's load reports in the summary) and
gives each of them a replica on a second expert rank.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import npy_lite  # noqa: E402  (numpy when present, else a plain .npy reader)

TOL = 1e-4
BF16_FLIP_TOL = 3e-2


def run(cmd, timeout, env=None):
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def make_requests(n, vocab, max_new, long_len, gap_ms=0, sampled=False):
    reqs = []
    for i in range(n):
        length = [3, 9, long_len, 1, 17, 5][i % 6] + (i // 6)
        ids = [(7 * i + 13 * j + 1) % vocab for j in range(length)]
        q = {"id": f"r{i:02d}", "prompt_ids": ids, "max_new_tokens": max_new + (i % 3),
             "ignore_eos": True}
        if sampled and i % 2 == 1:  # every other request samples (its own seed)
            q.update({"temperature": 0.9, "top_p": 0.9, "top_k": 30, "seed": 100 + i})
        if gap_ms:
            q["arrival_ms"] = i * gap_ms
        reqs.append(q)
    return reqs


def hottest_placement(summary, expert_ranks, n_layers_first_moe):
    """Two hottest experts per MoE layer get a replica on another expert rank."""
    load = summary.get("expert_load", {})
    layers = {}
    for layer, counts in load.items():
        hot = sorted(range(len(counts)), key=lambda e: (-counts[e], e))[:2]
        entry = {}
        for e in hot:
            home = expert_ranks[e % len(expert_ranks)]
            other = expert_ranks[(e + 1) % len(expert_ranks)]
            entry[str(e)] = [home, other] if other != home else [home]
        layers[str(layer)] = entry
    return {"layers": layers}


def check_rebalance(summary, load_delay_ms=0):
    """Live re-placement ran and paid off: >= 1 epoch completed, and the
    expert ranks' measured imbalance (max/mean rank load) in the windows that
    opened after the first epoch completed is clearly below the first window's
    (the initial round robin, with the hot experts stacked on one rank). A
    window that straddles the switch is left out: it measures both tables."""
    rb = summary.get("rebalance", {})
    done = rb.get("epochs_done", 0)
    windows = [w["measured_imbalance"] for w in rb.get("windows", []) if w["tokens"] > 0]
    print(f"re-placement: {done} epochs done; measured imbalance per window: "
          + " ".join(f"{w:.3f}" for w in windows))
    for e in rb.get("epochs", []):
        print(f"  epoch {e['epoch']}: predicted {e['predicted_before']:.3f} -> "
              f"{e['predicted_after']:.3f}, {e['experts_loaded']} loaded, "
              f"{e['experts_dropped']} dropped{' ABORTED ' + e['error'] if e['aborted'] else ''}")
    if done < 1 or len(windows) < 3:
        print(f"FAIL: expected >= 1 completed epoch and >= 3 windows")
        return 1
    if load_delay_ms:
        took = [e["done_s"] - e["start_s"] for e in rb.get("epochs", []) if e["done_s"] >= 0]
        if not took or min(took) < load_delay_ms / 1e3:
            print(f"FAIL: epochs took {took} s, less than the {load_delay_ms} ms load delay: "
                  f"the background load path was not used")
            return 1
    # windows that opened after the first completed epoch ran entirely with a new
    # table (windows are back to back: each opens when the one before closes)
    first_done = min(e["done_s"] for e in rb["epochs"] if e["done_s"] >= 0 and not e["aborted"])
    opened = [0.0] + [w["end_s"] for w in rb["windows"][:-1]]
    later = [w["measured_imbalance"] for w, start in zip(rb["windows"], opened)
             if w["tokens"] > 0 and start >= first_done]
    if not later:
        print("FAIL: no window opened after the first epoch")
        return 1
    after = sum(later) / len(later)
    if not after < windows[0] - 0.1:
        print(f"FAIL: mean imbalance after re-placement {after:.3f} is not below the first "
              f"window's {windows[0]:.3f} - 0.1")
        return 1
    print(f"imbalance {windows[0]:.3f} (round robin) -> {after:.3f} (mean of the {len(later)} "
          f"windows opened after the first epoch)")
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--source", required=True)
    ap.add_argument("--layout", required=True)
    ap.add_argument("--placement", default="")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--n-requests", type=int, default=12)
    ap.add_argument("--max-new", type=int, default=6)
    ap.add_argument("--kv-blocks", type=int, default=24)
    ap.add_argument("--block-tokens", type=int, default=4)
    ap.add_argument("--max-batch-tokens", type=int, default=32)
    ap.add_argument("--attn", default="absorb")
    ap.add_argument("--backend", default="cpu",
                    help="compute backend of the cluster's ranks (the reference is always "
                         "`moerun generate` on cpu)")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--kv-dtype", default="fp32", choices=["fp32", "bf16"],
                    help="latent KV rows on every rank and in generate")
    ap.add_argument("--ep-plane", default="ucx", choices=["ucx", "nccl"],
                    help="prefill wide-EP rows over UCX or NCCL (nccl: one GPU per prefill rank)")
    ap.add_argument("--route-plane", default="ucx", choices=["ucx", "nccl", "test-pairs"],
                    help="decode -> expert rows over UCX or NCCL pairs (pairs on one GPU stay "
                         "on UCX); test-pairs: the pairs' schedule with rows as UCX messages")
    ap.add_argument("--hot-experts", default="",
                    help="synthesize with these experts persistently hot (moerun synth)")
    ap.add_argument("--rebalance-period", type=float, default=0.0,
                    help="live re-placement period; > 0 also checks that the expert ranks' "
                         "measured imbalance drops after the first epoch")
    ap.add_argument("--arrival-gap-ms", type=int, default=0)
    ap.add_argument("--load-delay-ms", type=int, default=0,
                    help="expert ranks' background expert loads wait this long (test hook); "
                         "epochs must then take at least this long and every request still "
                         "completes (ranks keep serving while loading)")
    ap.add_argument("--sampled", action="store_true",
                    help="every other request samples (temperature 0.9, top-p 0.9, top-k 30, "
                         "its own seed); generate gets the same parameters")
    ap.add_argument("--no-logits", action="store_true",
                    help="no --logits-dir: decode ranks then pick tokens on their backend "
                         "(sample_rows / argmax, ids only); only tokens are compared")
    args = ap.parse_args()
    P, D, E = (int(x) for x in args.layout.split(","))
    moerun = os.path.join(args.build, "moerun")
    launcher = os.path.join(args.source, "launch", "moerun-cluster")
    env = dict(os.environ, MOERUN_BUILD_DIR=args.build, MOERUN_CLUSTER_TIMEOUT="240")

    if args.backend == "cuda":
        probe = run([moerun, "generate", "--prompt-ids", "1", "--max-new-tokens", "1",
                     "--backend", "cuda"], 120)
        if probe.returncode != 0 and "no usable GPU" in probe.stderr:
            if os.environ.get("MOERUN_REQUIRE_GPU") == "1":
                print("FAIL: MOERUN_REQUIRE_GPU=1 but", probe.stderr.strip())
                return 1
            print("SKIP:", probe.stderr.strip())
            return 77

    with tempfile.TemporaryDirectory(prefix="moerun-cluster-") as work:
        model = os.path.join(work, "model")
        synth = [moerun, "synth", "--out", model, "--preset", args.preset, "--seed", "5"]
        if args.hot_experts:
            synth += ["--hot-experts", args.hot_experts]
        r = run(synth, 120)
        if r.returncode != 0:
            print(r.stderr)
            return 1
        cfg = json.load(open(os.path.join(model, "config.json")))
        reqs = make_requests(args.n_requests, cfg["vocab_size"], args.max_new,
                             args.max_batch_tokens + 11, args.arrival_gap_ms, args.sampled)
        req_path = os.path.join(work, "requests.jsonl")
        with open(req_path, "w") as f:
            for q in reqs:
                f.write(json.dumps(q) + "\n")
        total_blocks = sum(-(-(len(q["prompt_ids"]) + q["max_new_tokens"]) // args.block_tokens)
                           for q in reqs)
        print(f"requests need {total_blocks} KV blocks in all; pool per decode rank "
              f"{args.kv_blocks} (admission must queue: {total_blocks > args.kv_blocks * D})")

        common = ["--prefill", str(P), "--decode", str(D), "--expert", str(E), "--model", model,
                  "--requests", req_path, "--kv-blocks", str(args.kv_blocks),
                  "--block-tokens", str(args.block_tokens),
                  "--max-batch-tokens", str(args.max_batch_tokens), "--attn", args.attn,
                  "--backend", args.backend, "--precision", args.precision,
                  "--ep-plane", args.ep_plane, "--route-plane", args.route_plane,
                  "--kv-dtype", args.kv_dtype]
        if args.rebalance_period > 0:
            common += ["--rebalance-period", str(args.rebalance_period),
                       "--load-report-period", str(args.rebalance_period / 4)]
        if args.load_delay_ms:
            common += ["--test-load-delay-ms", str(args.load_delay_ms)]
        if args.placement == "hot2":
            warm = os.path.join(work, "warm-summary.json")
            r = run([launcher] + common + ["--out", os.path.join(work, "warm.jsonl"),
                                           "--summary", warm], 300, env)
            if r.returncode != 0:
                print(r.stdout, r.stderr)
                return 1
            summary = json.load(open(warm))
            expert_ranks = list(range(1 + P + D, 1 + P + D + E))
            placement = hottest_placement(summary, expert_ranks, cfg["first_k_dense_replace"])
            place_path = os.path.join(work, "placement.json")
            json.dump(placement, open(place_path, "w"))
            print("placement with replicas:", json.dumps(placement))
            common += ["--placement", place_path]

        logits_dir = os.path.join(work, "logits")
        os.mkdir(logits_dir)
        out_path = os.path.join(work, "out.jsonl")
        sum_path = os.path.join(work, "summary.json")
        r = run([launcher] + common + ["--out", out_path, "--summary", sum_path]
                + ([] if args.no_logits else ["--logits-dir", logits_dir]), 300, env)
        print(r.stderr[-4000:])
        if r.returncode != 0:
            print(f"FAIL: launcher exit {r.returncode}")
            return 1
        results = [json.loads(line) for line in open(out_path)]
        failures = 0
        if len(results) != len(reqs):
            print(f"FAIL: {len(results)} result lines for {len(reqs)} requests")
            return 1
        worst = 0.0
        for q, res in zip(reqs, results):
            ids = ",".join(str(t) for t in q["prompt_ids"])
            ref_npy = os.path.join(work, f"ref-{q['id']}.npy")
            sampling = []
            for key in ("temperature", "top_p", "top_k", "seed"):
                if key in q:
                    sampling += ["--" + key.replace("_", "-"), str(q[key])]
            g = run([moerun, "generate", "--model", model, "--prompt-ids", ids,
                     "--max-new-tokens", str(q["max_new_tokens"]), "--ignore-eos",
                     "--attn", args.attn, "--precision", args.precision,
                     "--kv-dtype", args.kv_dtype,
                     "--logits-out", ref_npy] + sampling, 120)
            if g.returncode != 0:
                print(g.stderr)
                return 1
            want = [int(t) for t in g.stdout.strip().splitlines()[-1].split(",")]
            got = res.get("output_ids")
            if res.get("id") != q["id"] or got != want or res.get("finish_reason") != "length":
                print(f"FAIL {q['id']}: cluster {res} vs generate {want}")
                failures += 1
                continue
            for key in ("ttft_ms", "tpot_ms", "e2e_ms", "prompt_tokens"):
                if key not in res:
                    print(f"FAIL {q['id']}: result lacks {key}")
                    failures += 1
            if args.no_logits:  # tokens picked on the backend: no logits were written
                continue
            a = npy_lite.load(os.path.join(logits_dir, q["id"] + ".npy"))
            b = npy_lite.load(ref_npy)
            if a[0] != b[0]:
                print(f"FAIL {q['id']}: logits shape {a[0]} vs {b[0]}")
                failures += 1
                continue
            per_row = npy_lite.row_max_abs_diffs(a, b)
            diff = max(per_row)
            worst = max(worst, diff)
            if args.precision == "bf16" or args.kv_dtype == "bf16":
                within = sum(d <= TOL for d in per_row)
                if 2 * within < len(per_row) or diff > BF16_FLIP_TOL:
                    print(f"FAIL {q['id']}: {within}/{len(per_row)} positions within {TOL}, "
                          f"max |dlogit| {diff:.3g} (bf16: >= half, all <= {BF16_FLIP_TOL})")
                    failures += 1
            elif diff > TOL:
                print(f"FAIL {q['id']}: max |dlogit| {diff:.3g} > {TOL}")
                failures += 1
        summary = json.load(open(sum_path))
        config = summary.get("config", {})
        want_config = {"backend": args.backend, "weights": args.precision,
                       "kv_dtype": args.kv_dtype, "ep_plane": args.ep_plane,
                       "route_plane": args.route_plane, "attn": args.attn}
        for key, value in want_config.items():
            if config.get(key) != value:
                print(f"FAIL: summary config {key} = {config.get(key)!r}, ran with {value!r}")
                failures += 1
        if args.rebalance_period > 0:
            failures += check_rebalance(summary, args.load_delay_ms)
        print(f"layout {P}P{D}D{E}E{' +replicas' if args.placement else ''} on {args.backend}: "
              f"{len(reqs)} requests, "
              f"{failures} failures, worst max|dlogit| {worst:.3g}")
        return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
