#!/usr/bin/python3
"""check_faults.py — the cluster under bad input and dead ranks.

  check_faults.py --build B --source S bad-input
      A request file with malformed lines, a duplicate id, a token id >= vocab,
      a prompt longer than max_position_embeddings and max_new_tokens 0, plus
      --inject-garbage (every rank receives garbage, oversized and bad-header
      frames). Expect: each bad line ends with an error naming its problem, the
      valid requests complete, every rank rejected the frames and kept serving,
      and the launcher exits non-zero (some requests failed).

  check_faults.py --build B --source S kill-expert|kill-decode|kill-expert-test-pairs
      SIGKILL one expert (or decode) rank while many requests are running.
      Expect: nothing hangs — the launcher exits non-zero within a bound, every
      request has a result, completed or ending with an error naming the lost
      rank, and the summary lists the dead rank.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time


def launcher_env(build):
    return dict(os.environ, MOERUN_BUILD_DIR=build, MOERUN_CLUSTER_TIMEOUT="180")


def synth(build, out):
    subprocess.run([os.path.join(build, "moerun"), "synth", "--out", out, "--preset", "tiny",
                    "--seed", "9"], check=True, capture_output=True)
    return json.load(open(os.path.join(out, "config.json")))


def check_bad_input(args, work):
    cfg = synth(args.build, os.path.join(work, "model"))
    vocab, max_pos = cfg["vocab_size"], cfg["max_position_embeddings"]
    lines = [
        json.dumps({"id": "ok1", "prompt_ids": [1, 2, 3], "max_new_tokens": 4}),
        "{this is not json",
        json.dumps({"id": "ok1", "prompt_ids": [4], "max_new_tokens": 2}),
        json.dumps({"id": "big-token", "prompt_ids": [1, vocab], "max_new_tokens": 2}),
        json.dumps({"id": "too-long", "prompt_ids": [5] * (max_pos + 1), "max_new_tokens": 2}),
        json.dumps({"id": "zero-new", "prompt_ids": [5], "max_new_tokens": 0}),
        json.dumps({"id": "no-ids", "max_new_tokens": 3}),
        json.dumps({"id": "ok2", "prompt_ids": [9, 8, 7, 6, 5], "max_new_tokens": 5,
                    "temperature": 0.7, "top_k": 20, "seed": 3}),
    ]
    expect = {  # line number -> substring of the error
        2: "line 2", 3: "duplicate id", 4: "vocab", 5: "max_position_embeddings",
        6: "max_new_tokens", 7: "prompt_ids",
    }
    req = os.path.join(work, "req.jsonl")
    open(req, "w").write("\n".join(lines) + "\n")
    out, summ = os.path.join(work, "out.jsonl"), os.path.join(work, "summary.json")
    n_garbage = 2
    cmd = [os.path.join(args.source, "launch", "moerun-cluster"), "--prefill", "2", "--decode", "1",
           "--expert", "2", "--model", os.path.join(work, "model"), "--requests", req,
           "--out", out, "--summary", summ, "--inject-garbage", str(n_garbage)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=launcher_env(args.build))
    print(r.stderr[-3000:])
    failures = []
    if r.returncode == 0:
        failures.append("launcher exited 0 although requests failed")
    results = [json.loads(x) for x in open(out)]
    if len(results) != len(lines):
        failures.append(f"{len(results)} results for {len(lines)} lines")
    for i, res in enumerate(results, start=1):
        if i in expect:
            if res.get("finish_reason") != "error" or expect[i] not in res.get("error", ""):
                failures.append(f"line {i}: expected an error with '{expect[i]}', got {res}")
        elif res.get("finish_reason") not in ("length", "stop") or not res.get("output_ids"):
            failures.append(f"line {i}: valid request did not complete: {res}")
    summary = json.load(open(summ))
    n_ranks = 1 + 2 + 1 + 2
    # 3 malformed frames to every rank, plus a hostile Placement table to each
    # decode (1) and expert (2) rank, plus a short pair offer, a bad
    # MSG_DISPATCH_IDS and pair rows without a pair to each expert rank (2)
    want_rejected = 3 * n_garbage * (n_ranks - 1) + n_garbage * (1 + 2) + 3 * n_garbage * 2
    if summary.get("frames_rejected", 0) < want_rejected:
        failures.append(f"frames_rejected {summary.get('frames_rejected')} < {want_rejected}")
    if summary.get("dead_ranks"):
        failures.append(f"ranks died: {summary['dead_ranks']}")
    return failures


def kill_one(exe, work):
    """SIGKILL one process named exe of this run (its command line names this
    run's work dir); its pid, or None when there is none."""
    pids = [p for p in subprocess.run(["pgrep", "-x", exe], capture_output=True,
                                      text=True).stdout.split()
            if work in open(f"/proc/{p}/cmdline", "rb").read().decode(errors="replace")]
    if not pids:
        return None
    os.kill(int(pids[0]), signal.SIGKILL)
    return int(pids[0])


def check_kill(args, work, role, extra=()):
    synth(args.build, os.path.join(work, "model"))
    req = os.path.join(work, "req.jsonl")
    with open(req, "w") as f:
        for i in range(300):
            f.write(json.dumps({"id": f"k{i}", "prompt_ids": [(7 * i + j) % 256 for j in range(4 + i % 9)],
                                "max_new_tokens": 240, "ignore_eos": True}) + "\n")
    out, summ = os.path.join(work, "out.jsonl"), os.path.join(work, "summary.json")
    cmd = [os.path.join(args.source, "launch", "moerun-cluster"), "--prefill", "1", "--decode", "2",
           "--expert", "2", "--model", os.path.join(work, "model"), "--requests", req,
           "--out", out, "--summary", summ, "--heartbeat-timeout", "10"] + list(extra)
    log = open(os.path.join(work, "launcher.log"), "w+")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=launcher_env(args.build))
    exe = {"expert": "moerun-expert", "decode": "moerun-decode"}[role]
    victim, t_kill = None, None
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        log.seek(0)
        text = log.read()
        if text.count("ready:") >= 3:  # prefill + both decode ranks are serving
            time.sleep(0.7)
            victim = kill_one(exe, work)
            t_kill = time.time()
            break
        time.sleep(0.05)
    failures = []
    if victim is None:
        proc.kill()
        return [f"no {exe} process to kill (cluster not ready in time)"]
    try:
        rc = proc.wait(timeout=150)
    except subprocess.TimeoutExpired:
        proc.kill()
        return [f"cluster still running 150 s after {exe} pid {victim} was killed"]
    elapsed = time.time() - t_kill
    log.seek(0)
    print(log.read()[-3000:])
    print(f"killed {exe} pid {victim}; launcher exited {rc} {elapsed:.1f} s later")
    if rc == 0:
        failures.append("launcher exited 0 after a rank died")
    results = [json.loads(x) for x in open(out)]
    if len(results) != 300:
        failures.append(f"{len(results)} results for 300 requests")
    lost = 0
    for res in results:
        if res["finish_reason"] == "error":
            lost += 1
            if f"lost {role} rank" not in res["error"]:
                failures.append(f"{res['id']}: error does not name the lost rank: {res['error']}")
        elif res["finish_reason"] != "length" or len(res["output_ids"]) != 240:
            failures.append(f"{res['id']}: neither completed nor failed: {res}")
    if lost == 0:
        failures.append("no request was affected by the kill (killed too late?)")
    summary = json.load(open(summ))
    if not summary.get("dead_ranks"):
        failures.append("summary lists no dead rank")
    print(f"{len(results) - lost} completed, {lost} ended with an error naming the lost rank")
    return failures


def check_kill_recover(args, work):
    """SIGKILL an expert rank while requests keep arriving, with live
    re-placement on: requests caught by the death end with an error naming the
    lost rank; the coordinator re-places the dead rank's experts on the live
    expert ranks (a recovery epoch), and every request arriving 2 s after the
    kill completes."""
    synth(args.build, os.path.join(work, "model"))
    req = os.path.join(work, "req.jsonl")
    gap_ms, n = 30, 150
    with open(req, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"r{i}", "prompt_ids": [(7 * i + j) % 256 for j in range(4 + i % 9)],
                                "max_new_tokens": 24, "ignore_eos": True,
                                "arrival_ms": i * gap_ms}) + "\n")
    out, summ = os.path.join(work, "out.jsonl"), os.path.join(work, "summary.json")
    cmd = [os.path.join(args.source, "launch", "moerun-cluster"), "--prefill", "1", "--decode", "1",
           "--expert", "3", "--model", os.path.join(work, "model"), "--requests", req,
           "--out", out, "--summary", summ, "--heartbeat-timeout", "10",
           "--rebalance-period", "0.3", "--load-report-period", "0.1"]
    log = open(os.path.join(work, "launcher.log"), "w+")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=launcher_env(args.build))
    victim, t_ready, t_kill = None, None, None
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        log.seek(0)
        if "ranks ready" in log.read():  # the coordinator's clock starts now
            t_ready = time.time()
            time.sleep(0.8)
            victim = kill_one("moerun-expert", work)
            t_kill = time.time()
            break
        time.sleep(0.02)
    if victim is None:
        proc.kill()
        return ["no moerun-expert process to kill (cluster not ready in time)"]
    try:
        rc = proc.wait(timeout=150)
    except subprocess.TimeoutExpired:
        proc.kill()
        return ["cluster still running 150 s after the expert rank was killed"]
    log.seek(0)
    print(log.read()[-4000:])
    failures = []
    if rc == 0:
        failures.append("launcher exited 0 after a rank died")
    results = {json.loads(x)["id"]: json.loads(x) for x in open(out)}
    if len(results) != n:
        failures.append(f"{len(results)} results for {n} requests")
    kill_ms = (t_kill - t_ready) * 1e3
    lost = late_ok = late = 0
    for i in range(n):
        res = results.get(f"r{i}")
        if res is None:
            continue
        if res["finish_reason"] == "error":
            lost += 1
            if "lost expert rank" not in res["error"]:
                failures.append(f"r{i}: error does not name the lost rank: {res['error']}")
        if i * gap_ms >= kill_ms + 2000:
            late += 1
            late_ok += res["finish_reason"] == "length" and len(res["output_ids"]) == 24
    summary = json.load(open(summ))
    recovery = [e for e in summary.get("rebalance", {}).get("epochs", [])
                if e.get("recovery") and not e.get("aborted") and e.get("done_s", -1) >= 0]
    print(f"killed expert pid {victim} {kill_ms:.0f} ms after start; {lost} requests lost; "
          f"{late_ok}/{late} requests arriving 2 s after the kill completed; "
          f"{len(recovery)} recovery epoch(s)")
    if lost == 0:
        failures.append("no request was affected by the kill")
    if not recovery:
        failures.append("no completed recovery epoch in the summary")
    if late == 0 or late_ok != late:
        failures.append(f"only {late_ok} of {late} requests after the recovery completed")
    return failures


class Skip(str):
    """A check's answer when it has nothing to test on this machine (exit 77)."""


def gpu_usable(args):
    probe = subprocess.run([os.path.join(args.build, "moerun"), "generate", "--prompt-ids", "1",
                            "--max-new-tokens", "1", "--backend", "cuda"],
                           capture_output=True, text=True, timeout=120)
    return probe.returncode == 0


def run_launcher(args, work, flags, timeout):
    """launch/moerun-cluster with flags; -> (completed process, result lines, seconds)."""
    out = os.path.join(work, "out.jsonl")
    t0 = time.time()
    r = subprocess.run([os.path.join(args.source, "launch", "moerun-cluster")] + flags +
                       ["--out", out], capture_output=True, text=True, timeout=timeout,
                       env=launcher_env(args.build))
    took = time.time() - t0
    print(r.stderr[-3000:])
    results = [json.loads(x) for x in open(out)] if os.path.exists(out) else []
    return r, results, took


def startup_failure(r, results, took, limit_s=60):
    """What a refused start must look like: launcher exit 1, every request ended
    with an error, promptly."""
    failures = []
    if r.returncode != 1:
        failures.append(f"launcher exit {r.returncode}, expected 1")
    if not results or any(x["finish_reason"] != "error" for x in results):
        failures.append(f"requests did not all end with an error: {results[:2]}")
    if took > limit_s:
        failures.append(f"took {took:.0f} s")
    return failures


def check_slow_startup(args, work):
    """Every compute rank's model load takes 2.5 s (--test-startup-delay-ms,
    as a large checkpoint's would) with a 1 s heartbeat timeout: the ranks
    keep their transport serviced while loading, so nobody is declared dead
    (and fenced) and every request completes."""
    r, results, took = run_launcher(args, work, ["--prefill", "1", "--decode", "1", "--expert",
                                                 "2", "--heartbeat-period", "0.2",
                                                 "--heartbeat-timeout", "1",
                                                 "--test-startup-delay-ms", "2500"], 120)
    failures = []
    if r.returncode != 0:
        failures.append(f"launcher exit {r.returncode}, expected 0")
    declared = [x for x in r.stderr.splitlines() if "declares rank" in x]
    if declared:
        failures.append(f"a loading rank was declared dead: {declared[0]}")
    if not results or any(x["finish_reason"] == "error" for x in results):
        failures.append(f"not every request completed: {results[:2]}")
    if took < 2.5:
        failures.append(f"took {took:.1f} s: the start-up delay hook did not run")
    print(f"2.5 s loads under a 1 s heartbeat timeout: exit {r.returncode} after {took:.1f} s")
    return failures


def check_kv_pool_too_big(args, work):
    """A KV pool larger than the (simulated, devsim) GPU: the pool's ranks
    fail at start-up naming the sizes and what to change, every request ends
    with an error, the launcher exits 1 (no hang, nothing half-allocated)."""
    os.environ["MOERUN_DEVSIM_MEMORY_MB"] = "16"
    try:
        r, results, took = run_launcher(args, work, ["--backend", "devsim", "--kv-blocks",
                                                     "20000"], 120)
    finally:
        del os.environ["MOERUN_DEVSIM_MEMORY_MB"]
    failures = startup_failure(r, results, took)
    named = [x for x in r.stderr.splitlines()
             if "decode" in x and "the KV pool's blocks need 146.48 MiB, 16.00 MiB free" in x
             and "lower --kv-blocks or --kv-dtype bf16" in x]
    if not named:
        failures.append("the decode rank did not name the KV pool's size and the way out")
    return failures


def check_nccl_needs_cuda(args, work):
    """--ep-plane nccl with prefill ranks on the cpu backend: both prefill
    ranks fail at start-up naming the reason (NCCL needs --backend cuda),
    every request ends with an error, the launcher exits 1 (no hang). The
    same for --route-plane nccl and the decode rank."""
    failures = []
    for flag, role, want in (("--ep-plane", "prefill", 2), ("--route-plane", "decode", 1)):
        r, results, took = run_launcher(args, work, ["--prefill", "2", "--decode", "1",
                                                     "--expert", "1", flag, "nccl"], 120)
        failures += [f"{flag} nccl: {x}" for x in startup_failure(r, results, took)]
        lines = [x for x in r.stderr.splitlines()
                 if role in x and f"{flag} nccl needs --backend cuda" in x]
        if len(lines) < want:
            failures.append(f"{flag} nccl: {len(lines)} {role} ranks named the reason, "
                            f"expected {want}")
    return failures


def check_nccl_ep_on_gpus(args, work):
    """--backend cuda --ep-plane nccl with 2 prefill ranks. Without a usable
    GPU: skip (a failure with MOERUN_REQUIRE_GPU=1). With one GPU both prefill ranks share it, which NCCL
    refuses: each must say so ("prefill ranks need one GPU each") and the
    launcher must exit 1 promptly. With two or more GPUs every request must
    complete (the rows travel over NCCL; tokens against generate are checked
    by check_cluster.py --ep-plane nccl there)."""
    if not gpu_usable(args):
        if os.environ.get("MOERUN_REQUIRE_GPU") == "1":
            return ["MOERUN_REQUIRE_GPU=1 but no usable GPU"]
        return Skip("no usable GPU")
    r, results, took = run_launcher(args, work, ["--prefill", "2", "--decode", "1", "--expert",
                                                 "1", "--backend", "cuda", "--ep-plane", "nccl"],
                                    300)
    if r.returncode == 0:
        print(f"NCCL EP plane ran: {len(results)} requests in {took:.1f} s")
        if not results or any(x["finish_reason"] not in ("length", "stop") for x in results):
            return [f"exit 0 but not every request completed: {results[:2]}"]
        return []
    print(f"NCCL EP plane refused on a shared GPU: exit {r.returncode} after {took:.1f} s")
    failures = startup_failure(r, results, took, 120)
    if not any("prefill ranks need one GPU each" in x for x in r.stderr.splitlines()):
        failures.append("no one-GPU-per-prefill-rank message")
    return failures


def check_no_gpu(args, work):
    """--backend cuda on a machine without a usable GPU: every compute rank
    fails at start-up naming the reason, every request ends, and the launcher
    exits 1 within seconds (no hang). Skips (77) where a GPU works."""
    if gpu_usable(args):
        return Skip("a usable GPU is present")
    r, results, took = run_launcher(args, work, ["--prefill", "1", "--decode", "1", "--expert",
                                                 "1", "--backend", "cuda"], 120)
    failures = startup_failure(r, results, took)
    for role in ("prefill", "decode", "expert"):
        if not any(role in line and "no usable GPU" in line for line in r.stderr.splitlines()):
            failures.append(f"no '{role} ... no usable GPU' line")
    print(f"--backend cuda without a GPU: exit {r.returncode} after {took:.1f} s")
    return failures


CHECKS = {
    "bad-input": check_bad_input,
    "kill-expert": lambda args, work: check_kill(args, work, "expert"),
    "kill-decode": lambda args, work: check_kill(args, work, "decode"),
    "kill-expert-recover": check_kill_recover,
    # the same over --route-plane test-pairs: a pair whose peer died is dropped
    "kill-expert-test-pairs": lambda args, work: check_kill(args, work, "expert",
                                                            ["--route-plane", "test-pairs"]),
    "no-gpu": check_no_gpu,
    "nccl-needs-cuda": check_nccl_needs_cuda,
    "slow-startup": check_slow_startup,
    "kv-pool-too-big": check_kv_pool_too_big,
    "nccl-ep-on-gpus": check_nccl_ep_on_gpus,
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--source", required=True)
    ap.add_argument("mode", choices=list(CHECKS))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="moerun-faults-") as work:
        failures = CHECKS[args.mode](args, work)
    if isinstance(failures, Skip):
        print("SKIP:", failures)
        return 77
    for f in failures:
        print("FAIL:", f)
    print("PASS" if not failures else f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
