#!/usr/bin/python3
"""moerun generate on another backend against the cpu backend.

    check_backend.py --moerun BUILD/moerun --backend devsim|cuda [--precision fp32|bf16]

For several synthetic models (V3-style tiny in f32 and fp8, V2 softmax gates,
V2-Lite) and both MLA forms, runs `moerun generate --logits-out` on cpu and on
the backend with the same prompt, and checks:
  * devsim:      tokens equal and logits bit-identical (same CPU ops; only the
                 data movement differs, so any difference is a movement bug);
                 and without --logits-out (greedy: argmax on the backend, ids
                 only) the same tokens again (also for cuda fp32);
  * cuda fp32:   tokens equal, max|dlogit| <= 1e-3 (the bar the engine meets
                 against the float64 reference);
  * cuda bf16:   max|dlogit| <= 3e-2 * max|logit| with the CPU's prompt fed
                 (tokens may legitimately differ after a near tie, so only the
                 prompt's logits and the first token are compared).
cuda without a usable GPU exits 77 (skip) unless MOERUN_REQUIRE_GPU=1.
"""
import argparse
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import npy_lite  # noqa: E402  (numpy when present, else a plain reader)

CASES = [  # preset, dtype, attn, prompt, new tokens
    ("tiny", "f32", "absorb", "long:40", 8),
    ("tiny", "f32", "naive", "1,17,200,3,99", 6),
    ("tiny", "fp8", "absorb", "44,2,180,7", 5),
    ("tiny", "f32", "absorb", "long:90", 4),   # past original_max_position_embeddings (YaRN)
    ("tiny-v2", "f32", "absorb", "3,1,4,1,5,9,2,6", 5),
    ("tiny-v2", "bf16", "naive", "3,1,4,1,5,9,2,6", 4),
    ("tiny-lite", "f32", "absorb", "2,7,1,8,2,8", 5),
]


def run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def prompt_ids(spec):
    if spec.startswith("long:"):
        return ",".join(str((i * 37 + 11) % 256) for i in range(int(spec[5:])))
    return spec


def generate(moerun, model, prompt, n_new, attn, backend, precision, npy):
    """npy None: no --logits-out, so generate takes its greedy path (argmax on
    the backend, only token ids copied back)."""
    cmd = [moerun, "generate", "--model", model, "--prompt-ids", prompt,
           "--max-new-tokens", str(n_new), "--ignore-eos", "--attn", attn,
           "--backend", backend] + (["--logits-out", npy] if npy else [])
    if backend == "cuda":
        cmd += ["--precision", precision]
    r = run(cmd)
    if r.returncode != 0:
        return None, r.stderr.strip()
    return [int(t) for t in r.stdout.strip().splitlines()[-1].split(",")], ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--moerun", required=True)
    ap.add_argument("--backend", required=True, choices=["devsim", "cuda"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = ap.parse_args()

    failures = 0
    with tempfile.TemporaryDirectory(prefix="moerun-backend-") as work:
        for i, (preset, dtype, attn, spec, n_new) in enumerate(CASES):
            model = os.path.join(work, f"m{i}")
            r = run([args.moerun, "synth", "--out", model, "--preset", preset, "--dtype", dtype,
                     "--seed", "11"])
            if r.returncode != 0:
                print(r.stderr)
                return 1
            prompt = prompt_ids(spec)
            n_prompt = len(prompt.split(","))
            ref_npy, got_npy = os.path.join(work, "ref.npy"), os.path.join(work, "got.npy")
            want, err = generate(args.moerun, model, prompt, n_new, attn, "cpu", "fp32", ref_npy)
            if want is None:
                print("FAIL cpu run:", err)
                return 1
            got, err = generate(args.moerun, model, prompt, n_new, attn, args.backend,
                                args.precision, got_npy)
            if got is None:
                if args.backend == "cuda" and "no usable GPU" in err:
                    if os.environ.get("MOERUN_REQUIRE_GPU") == "1":
                        print("FAIL: MOERUN_REQUIRE_GPU=1 but", err)
                        return 1
                    print("SKIP:", err)
                    return 77
                print(f"FAIL {preset}/{dtype}/{attn}: {args.backend} run: {err}")
                failures += 1
                continue
            a, b = npy_lite.load(got_npy), npy_lite.load(ref_npy)
            label = f"{preset:9s} {dtype:4s} {attn:6s} prompt {n_prompt:3d} +{n_new}"
            if args.backend == "cuda" and args.precision == "bf16":
                rows = n_prompt  # the prompt's logits: same inputs on both backends
                diff = npy_lite.max_abs_diff(npy_lite.rows(a, rows), npy_lite.rows(b, rows))
                tol = 3e-2 * npy_lite.max_abs(npy_lite.rows(b, rows))
                ok = diff <= tol and got[0] == want[0]
                agree = sum(x == y for x, y in zip(got, want))
                print(f"{'ok  ' if ok else 'FAIL'} {label}: prompt max|dlogit| {diff:.3g} "
                      f"(tol {tol:.3g}), first token {'=' if got[0] == want[0] else '!='}, "
                      f"{agree}/{len(want)} tokens agree")
            else:
                tol = 0.0 if args.backend == "devsim" else 1e-3
                diff = npy_lite.max_abs_diff(a, b)
                ok = got == want and diff <= tol
                print(f"{'ok  ' if ok else 'FAIL'} {label}: tokens {'equal' if got == want else 'DIFFER'}, "
                      f"max|dlogit| {diff:.3g} (tol {tol:g})")
                if got != want:
                    print(f"     cpu {want}\n     {args.backend} {got}")
                # the greedy path: argmax on the backend, ids only
                greedy, err = generate(args.moerun, model, prompt, n_new, attn, args.backend,
                                       args.precision, None)
                if greedy != want:
                    print(f"FAIL {label}: greedy path (argmax on {args.backend}) gave {greedy} "
                          f"{err}, sampler on cpu logits {want}")
                    ok = False
            failures += 0 if ok else 1
    print(f"{args.backend} ({args.precision}) vs cpu: {len(CASES)} cases, {failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
