#!/usr/bin/python3
"""check_generate.py -- compare `moerun generate` against the numpy reference (meson test).

Exit status: 0 pass, 1 fail (also for usage errors, a crashing moerun, or missing numpy);
never 77 -- a missing dependency is a failure, not a skip.

Usage
  check_generate.py --moerun PATH --model DIR --prompt-ids 1,2,3 --max-new-tokens N
                    [--attn naive|absorb] [--tol 1e-3] [--bf16] [--kv-bf16] [--timeout SEC]
                    [--keep]
                    [--extra-args ARG ...]          (must come last; all following args are
                                                     passed to moerun; one arg containing
                                                     spaces is shell-split)
  check_generate.py --compare-npy A.npy B.npy [--tol 1e-3]

What it runs
  PATH generate --model DIR --prompt-ids IDS --max-new-tokens N --ignore-eos --attn X
       --logits-out TMP.npy [extra args]
Contract checked
  * exit status 0; last non-empty stdout line = N generated ids, comma-separated;
  * TMP.npy: .npy format 1.0, '<f4', C order, shape [S+N-1, vocab], all finite; rows 0..S-1
    are the logits at each prompt position, row S-1+j produced generated token j;
  * with the sequence prompt + generated[:-1], the float64 reference (dsv3_ref.forward_logits,
    same --attn form) agrees with every row to max|diff| <= tol;
  * each generated token j equals argmax of reference row S-1+j; if the reference's top-2
    margin there is < 10*tol the mismatch is reported and accepted, provided the chosen
    token's reference logit is within 10*tol of the maximum.
"""
import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

try:
    import numpy as np
except ImportError:
    sys.stderr.write("FAIL: numpy is not importable by %s (use /usr/bin/python3 with "
                     "python3-numpy)\n" % sys.executable)
    sys.exit(1)

sys.dont_write_bytecode = True  # keep tests/ref free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dsv3_ref  # noqa: E402


class Fail(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors fail the test with status 1, not 2
        self.print_usage(sys.stderr)
        sys.stderr.write("FAIL: %s\n" % message)
        sys.exit(1)


def read_npy_strict(path):
    """Read a .npy that must be format 1.0, '<f4', C order. -> float32 array."""
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
        except ValueError as e:
            raise Fail("%s: not a .npy file (%s)" % (path, e))
        if version != (1, 0):
            raise Fail("%s: .npy format version %s, expected 1.0" % (path, version))
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        if dtype.str != "<f4":
            raise Fail("%s: dtype %s, expected <f4" % (path, dtype.str))
        if fortran:
            raise Fail("%s: fortran_order is True, expected C order" % path)
        n = int(np.prod(shape, dtype=np.int64))
        data = np.fromfile(f, dtype="<f4", count=n)
        if data.size != n:
            raise Fail("%s: truncated: %d of %d floats" % (path, data.size, n))
        if f.read(1):
            raise Fail("%s: trailing bytes after the array data" % path)
    return data.reshape(shape)


def row_groups(n_rows, s_prompt):
    """Row ranges for the report table: prompt block, then decode rows (chunked if many)."""
    groups = []
    if s_prompt > 0:
        groups.append(("prompt", 0, min(s_prompt, n_rows)))
    dec = n_rows - s_prompt
    if dec > 0:
        step = 1 if dec <= 16 else -(-dec // 16)
        for a in range(s_prompt, n_rows, step):
            groups.append(("decode", a, min(a + step, n_rows)))
    return groups


def print_table(diff_rows, s_prompt, tol):
    print("%-7s %-13s %14s %s" % ("kind", "rows", "max|diff|", "ok"))
    for kind, a, b in row_groups(len(diff_rows), s_prompt):
        m = float(np.max(diff_rows[a:b]))
        print("%-7s %-13s %14.3e %s" % (kind, "%d..%d" % (a, b - 1), m, "yes" if m <= tol else "NO"))


def compare_logits(got, ref, s_prompt, tol, label, flip_tol=None):
    """Every row within tol; or, with flip_tol (BF16 mode), at least half of the rows
    within tol and every row within flip_tol: where an activation lies within float32
    rounding of a bfloat16 rounding midpoint, engine (fp32) and reference (float64)
    round it to different neighbours (a 2^-8 relative step of one GEMM input), and
    that row, plus the KV rows it leaves behind, differs by more than tol."""
    if got.shape != ref.shape:
        raise Fail("%s: shape %s, reference shape %s" % (label, list(got.shape), list(ref.shape)))
    if not np.all(np.isfinite(got)):
        bad = np.argwhere(~np.isfinite(got))[0]
        raise Fail("%s: non-finite value at row %d col %d" % (label, bad[0], bad[1]))
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    diff_rows = diff.max(axis=1) if diff.size else np.zeros(diff.shape[0])
    print_table(diff_rows, s_prompt, tol)
    worst = int(np.argmax(diff_rows)) if diff_rows.size else 0
    m = float(diff_rows[worst]) if diff_rows.size else 0.0
    print("max|diff| = %.3e at row %d (tol %.1e)" % (m, worst, tol))
    if flip_tol is not None:
        n_ok = int(np.sum(diff_rows <= tol))
        print("rows within tol: %d/%d (BF16: >= half needed, the rest within rounding-flip "
              "tol %.1e)" % (n_ok, len(diff_rows), flip_tol))
        if 2 * n_ok < len(diff_rows):
            raise Fail("%s: only %d of %d rows within tol %.1e" % (label, n_ok, len(diff_rows),
                                                                  tol))
        tol = flip_tol
    if m > tol:
        col = int(np.argmax(diff[worst]))
        raise Fail("%s: row %d col %d: got %.6g, reference %.6g (|diff| %.3e > tol %.1e)"
                   % (label, worst, col, got[worst, col], ref[worst, col], diff[worst, col], tol))


def check_tokens(gen, ref, s_prompt, tol):
    """Generated token j must be argmax of reference row s_prompt-1+j (near-ties accepted)."""
    n_tie = 0
    for j, tok in enumerate(gen):
        row = ref[s_prompt - 1 + j]
        order = np.argsort(-row, kind="stable")
        top, margin = int(order[0]), float(row[order[0]] - row[order[1]])
        if tok == top:
            continue
        if margin < 10 * tol and float(row[order[0]] - row[tok]) < 10 * tol:
            n_tie += 1
            print("note: token %d: got %d, reference argmax %d, but reference top-2 margin "
                  "%.3e < 10*tol; accepted" % (j, tok, top, margin))
            continue
        raise Fail("generated token %d is %d, reference argmax of row %d is %d "
                   "(ref logit %.6g vs %.6g, top-2 margin %.3e)"
                   % (j, tok, s_prompt - 1 + j, top, row[tok], row[top], margin))
    print("tokens: %d/%d equal reference argmax%s" % (len(gen) - n_tie, len(gen),
          (", %d near-ties accepted" % n_tie) if n_tie else ""))


def run_generate(a, tmpdir):
    out_npy = os.path.join(tmpdir, "logits.npy")
    extra = a.extra_args or []
    if len(extra) == 1 and " " in extra[0]:
        extra = shlex.split(extra[0])
    cmd = [a.moerun, "generate", "--model", a.model, "--prompt-ids", a.prompt_ids,
           "--max-new-tokens", str(a.max_new_tokens), "--ignore-eos", "--attn", a.attn,
           "--logits-out", out_npy] + (["--precision", "bf16"] if a.bf16 else []) + \
          (["--kv-dtype", "bf16"] if a.kv_bf16 else []) + extra
    print("$ " + " ".join(shlex.quote(c) for c in cmd))
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=a.timeout)
    except subprocess.TimeoutExpired:
        raise Fail("moerun did not finish within %d s" % a.timeout)
    except OSError as e:
        raise Fail("cannot run %s: %s" % (a.moerun, e))
    out, err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
    if p.returncode != 0:
        sys.stderr.write(err[-4000:])
        raise Fail("moerun exited with status %d" % p.returncode)
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    if not lines:
        raise Fail("moerun printed nothing on stdout")
    try:
        gen = [int(t) for t in lines[-1].split(",") if t.strip() != ""]
    except ValueError:
        raise Fail("last stdout line is not comma-separated ids: %r" % lines[-1][:200])
    if not os.path.exists(out_npy):
        raise Fail("moerun did not write %s" % out_npy)
    return gen, read_npy_strict(out_npy)


def check_generate(a):
    prompt = dsv3_ref.parse_ids(a.prompt_ids)
    n = a.max_new_tokens
    if not prompt or n < 1:
        raise Fail("need a non-empty prompt and --max-new-tokens >= 1")
    cfg, W = dsv3_ref.load_model(a.model)
    tmp = tempfile.mkdtemp(prefix="check_generate.")
    try:
        gen, got = run_generate(a, tmp)
        print("prompt %d ids, generated: %s" % (len(prompt), ",".join(map(str, gen))))
        if len(gen) != n:
            raise Fail("generated %d tokens, expected %d (--ignore-eos)" % (len(gen), n))
        bad = [t for t in gen if not 0 <= t < cfg.vocab]
        if bad:
            raise Fail("generated ids out of vocab range [0, %d): %s" % (cfg.vocab, bad))
        want_shape = (len(prompt) + n - 1, cfg.vocab)
        if tuple(got.shape) != want_shape:
            raise Fail("logits shape %s, expected %s" % (list(got.shape), list(want_shape)))
        ref = dsv3_ref.forward_logits(cfg, W, prompt + gen[:-1], attn=a.attn)
        flip_tol = 30 * a.tol if a.bf16 or a.kv_bf16 else None
        compare_logits(got, ref, len(prompt), a.tol, "moerun logits", flip_tol)
        check_tokens(gen, ref, len(prompt), flip_tol or a.tol)
    finally:
        if a.keep:
            print("kept %s" % tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def compare_npy(a):
    A, B = read_npy_strict(a.compare_npy[0]), read_npy_strict(a.compare_npy[1])
    if A.ndim != 2:
        raise Fail("%s: expected a 2-D [rows, vocab] array, got shape %s" % (a.compare_npy[0], list(A.shape)))
    compare_logits(A, B, A.shape[0], a.tol, "%s vs %s" % tuple(a.compare_npy))


def main(argv=None):
    ap = _Parser(description="compare moerun generate with the numpy reference")
    ap.add_argument("--moerun")
    ap.add_argument("--model")
    ap.add_argument("--prompt-ids")
    ap.add_argument("--max-new-tokens", type=int)
    ap.add_argument("--attn", choices=["naive", "absorb"], default="naive")
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--kv-bf16", action="store_true",
                    help="moerun --kv-dtype bf16 against the reference's BF16 KV mode (rounding "
                         "flips allowed as with --bf16)")
    ap.add_argument("--bf16", action="store_true",
                    help="moerun --precision bf16 against the reference's BF16 mode (rows "
                         "with bf16 rounding flips allowed up to 30*tol, see compare_logits)")
    ap.add_argument("--timeout", type=int, default=600)
    ap.add_argument("--keep", action="store_true", help="keep the logits file")
    ap.add_argument("--compare-npy", nargs=2, metavar=("A", "B"))
    ap.add_argument("--extra-args", nargs=argparse.REMAINDER, default=[])
    a = ap.parse_args(argv)
    try:
        if a.compare_npy:
            compare_npy(a)
        else:
            for opt in ("moerun", "model", "prompt_ids", "max_new_tokens"):
                if getattr(a, opt) is None:
                    ap.error("--%s is required" % opt.replace("_", "-"))
            dsv3_ref.set_bf16(a.bf16)
            dsv3_ref.set_kv_bf16(a.kv_bf16)
            check_generate(a)
    except Fail as e:
        print("FAIL: %s" % e)
        return 1
    except Exception as e:  # any crash of the checker itself is a failure, status 1
        import traceback
        traceback.print_exc()
        print("FAIL: checker error: %s" % e)
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
