#!/usr/bin/python3
"""selftest.py -- validates the numpy reference on its own (no C code needed).

Run: /usr/bin/python3 tests/ref/selftest.py [-v]      exit 0 = all pass, 1 = a failure.

Writes tiny random models shaped like the team's "tiny" synth preset (hidden 160, 3 layers,
16 experts, ...) with st.write_model into a temp dir and checks:
  * FP8 E4M3FN codec: special codes, an independent bit-level decoder, round-to-nearest-even
    against brute force, saturation; FP8 checkpoint (block 128, dims not multiples of 128,
    partial edge blocks) read back == independently dequantized codes, exactly;
  * BF16 checkpoint in 3 shards reads back == bf16-rounded weights exactly, == single file;
  * reader skips MTP layers (>= num_hidden_layers), consumes *_scale_inv, rejects bad offsets;
  * naive MLA == absorbed MLA (F32, FP8, q_lora=null/deepseek_v2 models);
  * full recompute == incremental latent-KV-cache decoding, every row;
  * MoE gate masks dropped groups with -inf (a case where 0-masking picks other experts);
    deepseek_v2 vs v3 weight normalisation;
  * YaRN frequencies / scales against hand-computed values; RoPE relative-position property
    and equivalence with the HF de-interleaved rotate_half layout;
  * the dsv3_ref CLI and check_generate.py (with fake `moerun` programs: one correct, one with
    perturbed logits, one emitting a wrong token).
"""
import contextlib
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # keep tests/ref free of __pycache__
sys.path.insert(0, HERE)
import st  # noqa: E402
import dsv3_ref as ref  # noqa: E402

VERBOSE = "-v" in sys.argv
RESULTS = []


def report(name, ok, detail=""):
    RESULTS.append((name, ok))
    print("%-4s %-44s %s" % ("ok" if ok else "FAIL", name, detail))
    sys.stdout.flush()


# ----------------------------------------------------------------------------- model factory

def tiny_config(**over):
    c = {
        "model_type": "deepseek_v3", "hidden_size": 160, "intermediate_size": 256,
        "moe_intermediate_size": 48, "num_hidden_layers": 3, "first_k_dense_replace": 1,
        "num_attention_heads": 4, "n_routed_experts": 16, "n_shared_experts": 1,
        "num_experts_per_tok": 4, "n_group": 4, "topk_group": 2, "topk_method": "noaux_tc",
        "scoring_func": "sigmoid", "norm_topk_prob": True, "routed_scaling_factor": 2.5,
        "q_lora_rank": 48, "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8,
        "v_head_dim": 16, "vocab_size": 256, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                         "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
        "max_position_embeddings": 256, "tie_word_embeddings": False,
    }
    c.update(over)
    return c


def random_weights(c, seed, extra_layers=0):
    """HF-named float64 weights. Returns dict name -> (kind, array); kind in
    {'linear', 'embed', 'norm', 'gate', 'bias'} lets the caller pick storage dtypes."""
    rng = np.random.default_rng(seed)
    D, H = c["hidden_size"], c["num_attention_heads"]
    nope, rope, vd = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
    kvl, ql = c["kv_lora_rank"], c.get("q_lora_rank") or 0
    out = {}

    def lin(name, o, i):
        out[name] = ("linear", rng.standard_normal((o, i)) / math.sqrt(i))

    def norm(name, n):
        out[name] = ("norm", 1.0 + 0.1 * rng.standard_normal(n))

    out["model.embed_tokens.weight"] = ("embed", rng.standard_normal((c["vocab_size"], D)))
    for li in range(c["num_hidden_layers"] + extra_layers):
        p = "model.layers.%d." % li
        norm(p + "input_layernorm.weight", D)
        norm(p + "post_attention_layernorm.weight", D)
        if ql:
            lin(p + "self_attn.q_a_proj.weight", ql, D)
            norm(p + "self_attn.q_a_layernorm.weight", ql)
            lin(p + "self_attn.q_b_proj.weight", H * (nope + rope), ql)
        else:
            lin(p + "self_attn.q_proj.weight", H * (nope + rope), D)
        lin(p + "self_attn.kv_a_proj_with_mqa.weight", kvl + rope, D)
        norm(p + "self_attn.kv_a_layernorm.weight", kvl)
        lin(p + "self_attn.kv_b_proj.weight", H * (nope + vd), kvl)
        lin(p + "self_attn.o_proj.weight", D, H * vd)
        if li < c["first_k_dense_replace"]:
            I = c["intermediate_size"]
            lin(p + "mlp.gate_proj.weight", I, D)
            lin(p + "mlp.up_proj.weight", I, D)
            lin(p + "mlp.down_proj.weight", D, I)
        else:
            E, I = c["n_routed_experts"], c["moe_intermediate_size"]
            out[p + "mlp.gate.weight"] = ("gate", rng.standard_normal((E, D)) / math.sqrt(D))
            if c.get("topk_method") == "noaux_tc":
                out[p + "mlp.gate.e_score_correction_bias"] = ("bias", 0.1 * rng.standard_normal(E))
            for e in range(E):
                q = p + "mlp.experts.%d." % e
                lin(q + "gate_proj.weight", I, D)
                lin(q + "up_proj.weight", I, D)
                lin(q + "down_proj.weight", D, I)
            Is = I * c["n_shared_experts"]
            lin(p + "mlp.shared_experts.gate_proj.weight", Is, D)
            lin(p + "mlp.shared_experts.up_proj.weight", Is, D)
            lin(p + "mlp.shared_experts.down_proj.weight", D, Is)
    norm("model.norm.weight", D)
    out["lm_head.weight"] = ("embed", rng.standard_normal((c["vocab_size"], D)) / math.sqrt(D))
    return out


def storage(weights, scheme):
    """scheme 'f32' | 'bf16' | 'fp8' (V3 checkpoint style: linears FP8, embed/head/gate BF16,
    norms BF16, bias F32) -> tensors dict for st.write_model."""
    t = {}
    for name, (kind, a) in weights.items():
        if scheme == "f32":
            t[name] = ("F32", a)
        elif scheme == "bf16":
            t[name] = ("F32" if kind == "bias" else "BF16", a)
        else:
            t[name] = {"linear": "F8_E4M3", "bias": "F32"}.get(kind, "BF16"), a
    return t


# ----------------------------------------------------------------------------- tests

def decode_fp8_bits(code):
    """Independent E4M3FN decoder: build float32 bits from the fields."""
    s, e, m = (code >> 7) & 1, (code >> 3) & 0xF, code & 7
    if e == 15 and m == 7:
        return float("nan")
    if e == 0:
        v = math.ldexp(m, -9)  # m/8 * 2^-6
        return -v if s else v
    bits = (s << 31) | ((e - 7 + 127) << 23) | (m << 20)
    return float(np.array([bits], dtype=np.uint32).view(np.float32)[0])


def test_fp8_codec():
    tab = np.array([decode_fp8_bits(c) for c in range(256)])
    same = np.array_equal(np.isnan(tab), np.isnan(st.FP8_TABLE)) and \
        np.array_equal(tab[~np.isnan(tab)], st.FP8_TABLE[~np.isnan(tab)])
    specials = (np.isnan(st.FP8_TABLE[0x7F]) and np.isnan(st.FP8_TABLE[0xFF])
                and int(np.isnan(st.FP8_TABLE).sum()) == 2 and st.FP8_TABLE[0x7E] == 448.0
                and st.FP8_TABLE[0xFE] == -448.0 and st.FP8_TABLE[0x01] == 2.0 ** -9
                and st.FP8_TABLE[0x08] == 2.0 ** -6 and st.FP8_TABLE[0x07] == 7 * 2.0 ** -9)
    report("fp8 table == bit-level decoder, specials", same and specials,
           "NaN codes 0x7F/0xFF, max 448, min subnormal 2^-9")
    # round to nearest even, brute force against the finite grid
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.standard_normal(20000) * 50, rng.standard_normal(2000) * 0.01])
    codes = st.fp8_e4m3_encode(x)
    vals = st.FP8_TABLE[codes]
    grid = st.FP8_TABLE[:127]
    nearest_err = np.min(np.abs(np.minimum(np.abs(x), 448)[:, None] - grid[None, :]), axis=1)
    ok_near = np.array_equal(np.abs(np.minimum(np.abs(x), 448) - np.abs(vals)), nearest_err)
    ok_sign = np.all((np.sign(vals) == np.sign(x)) | (vals == 0))
    ties = {1.0625: 0x38, 1.1875: 0x3A, -1.0625: 0xB8, 2.0 ** -10: 0x00, 3 * 2.0 ** -10: 0x02,
            464.0: 0x7E, 1e9: 0x7E, -1e9: 0xFE, 0.0: 0x00}
    ok_ties = all(int(st.fp8_e4m3_encode(np.array([k]))[0]) == v for k, v in ties.items())
    # bf16 writer rounding: independent RNE cases (7 mantissa bits, ulp(1) = 2^-7)
    bf = {1 + 2.0 ** -8: 1.0, 1 + 3 * 2.0 ** -8: 1 + 2.0 ** -6, 1 + 2.0 ** -8 + 2.0 ** -20: 1 + 2.0 ** -7,
          -3.0: -3.0, 65504.0: 65536.0}
    ok_bf = all(st.round_to_bf16(np.array([k]))[0] == v for k, v in bf.items())
    report("bf16 encode is RNE", ok_bf, "%d tie/rounding cases" % len(bf))
    report("fp8 encode is RNE onto E4M3 grid", ok_near and ok_sign and ok_ties,
           "%d random values nearest, %d tie/saturation cases" % (len(x), len(ties)))


def test_fp8_model(tmp):
    c = tiny_config()
    w = random_weights(c, seed=3, extra_layers=1)   # layer 3 = an "MTP" layer to be skipped
    d = os.path.join(tmp, "fp8")
    st.write_model(d, c, storage(w, "fp8"))
    raw = st.read_safetensors(os.path.join(d, "model.safetensors"))
    cfg, W = ref.load_model(d)
    lut = np.array([decode_fp8_bits(k) for k in range(256)])
    n_fp8, n_partial, exact = 0, 0, True
    max_rel = 0.0
    for name, (dt, shape, data) in raw.items():
        if dt != "F8_E4M3":
            continue
        n_fp8 += 1
        codes = np.frombuffer(data, dtype=np.uint8).reshape(shape)
        sdt, sshape, sdata = raw[name + "_scale_inv"]
        s = np.frombuffer(sdata, dtype="<f4").reshape(sshape)
        exact &= sshape == (-(-shape[0] // 128), -(-shape[1] // 128))
        if shape[0] % 128 or shape[1] % 128:
            n_partial += 1
        if name.startswith("model.layers.3."):
            continue
        expect = np.empty(shape)
        # independent dequant: block loop with the bit-level decoder
        for bi in range(sshape[0]):
            for bj in range(sshape[1]):
                blk = codes[bi * 128:(bi + 1) * 128, bj * 128:(bj + 1) * 128]
                expect[bi * 128:(bi + 1) * 128, bj * 128:(bj + 1) * 128] = lut[blk] * float(s[bi, bj])
        exact &= np.array_equal(W[name], expect)
        orig = w[name][1]
        max_rel = max(max_rel, float(np.max(np.abs(W[name] - orig)) / np.max(np.abs(orig))))
    no_mtp = not any(k.startswith("model.layers.3.") for k in W)
    no_scale = not any(k.endswith("_scale_inv") for k in W)
    report("fp8 checkpoint dequant exact", exact and n_partial > 0 and no_mtp and no_scale,
           "%d fp8 tensors (%d with partial edge blocks), max err/amax %.3g, MTP layer skipped"
           % (n_fp8, n_partial, max_rel))
    return cfg, W


def test_bf16_sharded(tmp):
    c = tiny_config()
    w = random_weights(c, seed=4)
    d3, d1 = os.path.join(tmp, "bf16x3"), os.path.join(tmp, "bf16x1")
    st.write_model(d3, c, storage(w, "bf16"), shards=3)
    st.write_model(d1, c, storage(w, "bf16"), shards=1)
    with open(os.path.join(d3, "model.safetensors.index.json")) as f:
        n_files = len(set(json.load(f)["weight_map"].values()))
    _, W3 = st.load_dir(d3)
    _, W1 = st.load_dir(d1)
    exact = all(np.array_equal(W3[n], a.astype(np.float32) if k == "bias" else st.round_to_bf16(a))
                for n, (k, a) in w.items())
    same = W3.keys() == W1.keys() and all(np.array_equal(W3[n], W1[n]) for n in W1)
    rounded = any(not np.array_equal(W3[n], a) for n, (k, a) in w.items())
    report("bf16 3-shard reads back exactly", exact and same and n_files == 3 and rounded,
           "%d tensors over %d shards == single file" % (len(W3), n_files))


def test_reader_rejects(tmp):
    d = os.path.join(tmp, "bad")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({"num_hidden_layers": 1}, f)
    raw = st.encode("F32", np.ones((4, 4)))
    cases = {
        "offset past end": lambda h: h["t"].update(data_offsets=[0, 1 << 20]),
        "size mismatch": lambda h: h["t"].update(shape=[4, 5]),
        "bad dtype": lambda h: h["t"].update(dtype="Q9"),
    }
    caught = 0
    for why, hook in cases.items():
        with open(os.path.join(d, "model.safetensors"), "wb") as f:
            f.write(st.safetensors_bytes({"t": ("F32", (4, 4), raw)}, header_override=hook))
        try:
            st.load_dir(d)
        except ValueError:
            caught += 1
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(st.safetensors_bytes({"t": ("F8_E4M3", (4, 4), bytes(16))}))
    try:
        st.load_dir(d)
    except ValueError:
        caught += 1
    report("reader rejects bad headers", caught == len(cases) + 1,
           "%d/%d hostile files raised ValueError" % (caught, len(cases) + 1))


def max_abs(a, b):
    return float(np.max(np.abs(a - b)))


def test_naive_vs_absorb(label, cfg, W, ids):
    a = ref.forward_logits(cfg, W, ids, "naive")
    b = ref.forward_logits(cfg, W, ids, "absorb")
    d = max_abs(a, b)
    report("naive == absorbed MLA (%s)" % label, d <= 1e-10 and np.all(np.isfinite(a)),
           "S=%d max|diff| %.2e (logit scale %.2f)" % (len(ids), d, float(np.std(a))))
    return a


def test_incremental(label, cfg, W, ids, full, attn):
    m = ref.IncrementalModel(cfg, W, attn)
    rows = [m.feed(ids[:5])]
    rows.append(m.feed(ids[5:8]))                    # a chunk after a prefill
    for t in ids[8:]:
        rows.append(m.feed([t]))                     # single-token decode steps
    inc = np.concatenate(rows, axis=0)
    d = max_abs(inc, full)
    dl = max_abs(inc[-1], full[-1])
    report("full recompute == KV-cache (%s, %s)" % (label, attn), d <= 1e-10,
           "all %d rows max|diff| %.2e, last row %.2e" % (len(ids), d, dl))


def test_gate_neg_inf():
    cfg = ref.parse_config(tiny_config())
    # groups of 4 experts; bias -2 makes every selection score negative (in (-2, -1)).
    logits = np.array([3, 3, -5, -5, 2, 2, -5, -5, -5, -5, -5, -5, -5, -5, -5, -5], float)
    bias = np.full(16, -2.0)
    idx, w = ref.moe_gate(cfg, logits, bias)
    # what a 0-masked gate would pick (the bug this test guards against)
    sig = 1 / (1 + np.exp(-logits))
    sel0 = sig + bias
    sel0[8:] = 0.0                       # groups 2 and 3 dropped, masked with 0
    zero_pick = np.argsort(-sel0, kind="stable")[:4]
    want_w = sig[[0, 1, 4, 5]] / sig[[0, 1, 4, 5]].sum() * 2.5
    ok = list(idx) == [0, 1, 4, 5] and np.allclose(w, want_w, rtol=0, atol=1e-15) \
        and sorted(zero_pick) != [0, 1, 4, 5]
    report("gate masks dropped groups with -inf", ok,
           "picked %s (0-masking would pick %s), weights sum %.6f"
           % (list(idx), sorted(int(i) for i in zero_pick), float(w.sum())))
    # ties break toward lower index; groups chosen by top-2 sum (not max) when bias exists
    l2 = np.array([0, 0, 0, 0, 4, -9, -9, -9, 1, 1, -9, -9, 0.9, 0.9, -9, -9], float)
    idx2, _ = ref.moe_gate(cfg, l2, np.zeros(16))
    # group sums: g0 = 2*s(0) = 1.0, g1 = s(4)+s(-9) ~ 0.98, g2 = 2*s(1) ~ 1.46, g3 ~ 1.42
    # -> keep g2, g3 (max-based would keep g1: s(4) = .982 > .731); top-4: 8, 9, 12, 13
    ok2 = list(idx2) == [8, 9, 12, 13]
    # deepseek_v2 semantics: norm_topk_prob -> normalised, unscaled; else scaled, unnormalised
    v2n = ref.parse_config(tiny_config(model_type="deepseek_v2", scoring_func="softmax",
                                       topk_method="greedy", norm_topk_prob=True))
    v2s = ref.parse_config(tiny_config(model_type="deepseek_v2", scoring_func="softmax",
                                       topk_method="greedy", norm_topk_prob=False))
    lg = np.linspace(-1, 1, 16)
    _, wn = ref.moe_gate(v2n, lg)
    i_s, ws = ref.moe_gate(v2s, lg)
    p = np.exp(lg) / np.exp(lg).sum()
    ok3 = abs(wn.sum() - 1) < 1e-12 and list(i_s) == [15, 14, 13, 12] \
        and np.allclose(ws, p[[15, 14, 13, 12]] * 2.5, rtol=1e-14)
    report("gate groups by top-2 sum; v2 weight rules", ok2 and ok3,
           "picked %s; v2 normalised sum %.3f, v2 scaled %s" % (list(idx2), wn.sum(), np.round(ws, 4)))


def test_yarn():
    cfg = ref.parse_config(tiny_config())
    # d=8, theta=1e4, orig=64: cd(32) = 8 ln(1/pi)/(2 ln 1e4) = -0.497 -> low 0;
    # cd(1) = 8 ln(64/2pi)/(2 ln 1e4) = 1.008 -> high 2; ramp = [0, .5, 1, 1]
    # freq = [1, .1, .01, .001] -> [1, .1*(.5 + .5/4), .01/4, .001/4]
    want = np.array([1.0, 0.0625, 0.0025, 0.00025])
    want_scale = 24 ** -0.5 * (1 + 0.1 * math.log(4)) ** 2
    ok1 = np.allclose(cfg.freq, want, rtol=1e-14, atol=0) and cfg.rope_mscale == 1.0 \
        and abs(cfg.softmax_scale - want_scale) < 1e-15
    c2 = ref.parse_config(tiny_config(rope_scaling=dict(tiny_config()["rope_scaling"], mscale=1.0,
                                                        mscale_all_dim=0.5)))
    want_m = (1 + 0.1 * math.log(4)) / (1 + 0.05 * math.log(4))
    ok2 = abs(c2.rope_mscale - want_m) < 1e-15 and \
        abs(c2.softmax_scale - 24 ** -0.5 * (1 + 0.05 * math.log(4)) ** 2) < 1e-15
    c3 = ref.parse_config(tiny_config(max_position_embeddings=64))   # not extended: no YaRN
    ok3 = np.allclose(c3.freq, [1, .1, .01, .001], rtol=1e-14) and c3.softmax_scale == 24 ** -0.5
    report("yarn freq/mscale/softmax scale", ok1 and ok2 and ok3,
           "freq %s, softmax_scale %.6f, m(1,.5) %.6f" % (cfg.freq, cfg.softmax_scale, c2.rope_mscale))


def test_rope_properties():
    cfg = ref.parse_config(tiny_config())
    rng = np.random.default_rng(7)
    q, k = rng.standard_normal(8), rng.standard_normal(8)

    def rot(x, p):
        c, s = ref.rope_tables(cfg, [p])
        return ref.apply_rope(x[None], c, s)[0]
    rel = abs(rot(q, 100) @ rot(k, 90) - rot(q, 13) @ rot(k, 3))
    norm = abs(np.linalg.norm(rot(q, 77)) - np.linalg.norm(q))
    # HF layout: de-interleave ([x0,x2,..,x1,x3,..]) then rotate_half with cos/sin repeated
    c, s = ref.rope_tables(cfg, [37])
    cc, ss = np.concatenate([c[0], c[0]]), np.concatenate([s[0], s[0]])

    def hf(x):
        x = np.concatenate([x[0::2], x[1::2]])
        return x * cc + np.concatenate([-x[4:], x[:4]]) * ss
    hfd = abs(hf(q) @ hf(k) - rot(q, 37) @ rot(k, 37))
    report("rope relative-position / HF-layout equivalence", rel < 1e-12 and norm < 1e-12 and hfd < 1e-12,
           "|<q100,k90>-<q13,k3>| %.1e, HF dot diff %.1e" % (rel, hfd))


FAKE_MOERUN = r'''#!/usr/bin/python3
import argparse, os, sys
sys.path.insert(0, %r)
import numpy as np, dsv3_ref as ref
ap = argparse.ArgumentParser()
ap.add_argument("cmd"); ap.add_argument("--model"); ap.add_argument("--prompt-ids")
ap.add_argument("--max-new-tokens", type=int); ap.add_argument("--ignore-eos", action="store_true")
ap.add_argument("--attn"); ap.add_argument("--logits-out")
ap.add_argument("--perturb", type=float, default=0.0); ap.add_argument("--wrong-token", action="store_true")
a = ap.parse_args()
cfg, W = ref.load_model(a.model)
gen, logits = ref.greedy_generate(cfg, W, ref.parse_ids(a.prompt_ids), a.max_new_tokens, a.attn)
logits = logits + a.perturb * np.sin(np.arange(logits.size)).reshape(logits.shape)
if a.wrong_token:
    gen[-1] = int(np.argmin(logits[-1]))
ref.save_npy_f32(a.logits_out, logits)
print("some log line")
print(",".join(map(str, gen)))
'''


def test_cli_and_checker(tmp, model_dir, cfg, W, ids):
    py = sys.executable
    out = os.path.join(tmp, "cli.npy")
    r = subprocess.run([py, os.path.join(HERE, "dsv3_ref.py"), "--model", model_dir, "--ids",
                        ",".join(map(str, ids)), "--attn", "absorb", "--out", out],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    got = np.load(out)
    full = ref.forward_logits(cfg, W, ids)
    ok = r.returncode == 0 and got.dtype.str == "<f4" and got.shape == (len(ids), cfg.vocab) \
        and max_abs(got, full) < 1e-5
    np.save(os.path.join(tmp, "cli_f32.npy"), full.astype("<f4"))
    r2 = subprocess.run([py, os.path.join(HERE, "check_generate.py"), "--compare-npy", out,
                         os.path.join(tmp, "cli_f32.npy"), "--tol", "1e-5"],
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    report("dsv3_ref CLI + --compare-npy", ok and r2.returncode == 0,
           "shape %s, CLI-vs-inprocess %.1e" % (list(got.shape), max_abs(got, full)))

    fake = os.path.join(tmp, "fake_moerun")
    with open(fake, "w") as f:
        f.write(FAKE_MOERUN % HERE)
    os.chmod(fake, 0o755)
    base = [py, os.path.join(HERE, "check_generate.py"), "--moerun", fake, "--model", model_dir,
            "--prompt-ids", ",".join(map(str, ids[:6])), "--max-new-tokens", "5", "--tol", "1e-3"]
    codes = {}
    for label, extra in [("good", ["--attn", "absorb"]),
                         ("perturbed", ["--extra-args", "--perturb 5e-3"]),
                         ("wrong-token", ["--extra-args", "--wrong-token"])]:
        p = subprocess.run(base + extra, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        codes[label] = p.returncode
        if VERBOSE or (label == "good" and p.returncode != 0):
            print(p.stdout.decode())
    ok = codes == {"good": 0, "perturbed": 1, "wrong-token": 1}
    report("check_generate pass/fail on fake moerun", ok, "exit codes %s" % codes)

    # token rule: near-ties (top-2 margin < 10*tol) accepted, clear mismatches rejected
    import check_generate as cg
    rows = np.array([[0.0, 5.0, 5.005, 1.0], [0.0, 5.0, 5.02, 1.0]])
    outcomes = []
    for gen in ([2, 2], [1, 2], [2, 1]):
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                cg.check_tokens(gen, rows, 1, 1e-3)
            outcomes.append(True)
        except cg.Fail:
            outcomes.append(False)
    report("check_generate near-tie rule", outcomes == [True, True, False],
           "accept tie-swap, reject margin 2e-2 > 1e-2: %s" % outcomes)


# ----------------------------------------------------------------------------- main

def main():
    t0 = time.time()
    ids = [5, 17, 200, 3, 99, 42, 7, 128, 255, 0, 64, 31, 77]
    with tempfile.TemporaryDirectory(prefix="dsv3_selftest.") as tmp:
        test_fp8_codec()
        test_gate_neg_inf()
        test_yarn()
        test_rope_properties()
        test_reader_rejects(tmp)
        test_bf16_sharded(tmp)

        c = tiny_config()
        d32 = os.path.join(tmp, "f32")
        st.write_model(d32, c, storage(random_weights(c, seed=2), "f32"))
        cfg, W = ref.load_model(d32)
        full = test_naive_vs_absorb("f32", cfg, W, ids)
        test_incremental("f32", cfg, W, ids, full, "naive")
        test_incremental("f32", cfg, W, ids, full, "absorb")

        cfg8, W8 = test_fp8_model(tmp)
        full8 = test_naive_vs_absorb("fp8", cfg8, W8, ids)
        test_incremental("fp8", cfg8, W8, ids, full8, "absorb")

        c2 = tiny_config(model_type="deepseek_v2", q_lora_rank=None, scoring_func="softmax",
                         topk_method="group_limited_greedy", norm_topk_prob=False,
                         routed_scaling_factor=1.5,
                         rope_scaling=dict(tiny_config()["rope_scaling"], mscale=0.707,
                                           mscale_all_dim=0.707))
        dv2 = os.path.join(tmp, "v2")
        st.write_model(dv2, c2, storage(random_weights(c2, seed=5), "bf16"), shards=2)
        cfg2, W2 = ref.load_model(dv2)
        full2 = test_naive_vs_absorb("v2 q_proj softmax", cfg2, W2, ids)
        test_incremental("v2", cfg2, W2, ids, full2, "naive")

        test_cli_and_checker(tmp, d32, cfg, W, ids)
    n_fail = sum(1 for _, ok in RESULTS if not ok)
    print("%d checks, %d failed, %.1f s" % (len(RESULTS), n_fail, time.time() - t0))
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
