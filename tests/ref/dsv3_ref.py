#!/usr/bin/python3
"""dsv3_ref.py -- float64 numpy reference of the DeepSeek-V3 forward pass (test tooling).

Independent re-statement of the official inference math (deepseek-ai/DeepSeek-V3
inference/model.py) on HF config.json + safetensors, written for clarity, one function per
piece. This is what the C engine is checked against; it is never product code.

Contract
--------
  load_model(dir) -> (Cfg, W)                  W: HF tensor name -> float64 array (st.load_dir)
  forward_logits(cfg, W, ids, attn="naive") -> float64 [S, vocab]   full causal recompute
  IncrementalModel(cfg, W, attn).feed(ids) -> float64 [len(ids), vocab]   latent KV cache
  greedy_generate(cfg, W, prompt, n, attn) -> (generated ids, logits [S+n-1, vocab])
  Building blocks: rmsnorm, swiglu_mlp, yarn_get_mscale, rope_tables, apply_rope,
  mla_qkv, attention_naive, attention_absorbed, moe_gate, moe_ffn, decoder_layer.

Semantics (the team's spec)
  * RMSNorm x / sqrt(mean(x^2) + eps) * w; block h = x + attn(norm(x)); out = h + ffn(norm(h)).
  * RoPE: interleaved pairs (x[2i], x[2i+1]) rotated by pos*freq[i], freq[i] = theta^(-2i/d).
    YaRN applied statically when rope_scaling is yarn and max_position_embeddings >
    original_max_position_embeddings; cos/sin multiplied by
    get_mscale(f, mscale)/get_mscale(f, mscale_all_dim); softmax scale (nope+rope)^-0.5 times
    get_mscale(f, mscale_all_dim)^2 when YaRN applies.
  * MLA naive (k, v expanded per head) and absorbed (attention over latent c and k_pe).
  * MoE gate: sigmoid|softmax scores, + e_score_correction_bias for selection only,
    group-limited selection masking dropped groups with -inf, top-k with ties to lower
    index, weights from unbiased scores, normalisation per model_type (v3/kimi vs v2).

BF16 mode (set_bf16(True), what `moerun generate --precision bf16` computes)
  * every weight matrix (2-D weights except the embedding table) is rounded to bfloat16
    (round to nearest even, via float32) when loaded;
  * the activation input of every product with a weight matrix is rounded the same way
    (linear(); the absorbed attention's q_nope . W_uk and o_lat . W_uv), the products and
    sums stay float64 here (fp32 in the engine); attention scores, softmax, norms, RoPE and
    the router's arithmetic after its logits are unrounded.

BF16 KV mode (set_kv_bf16(True), what `moerun generate --kv-dtype bf16` computes)
  * the latent cache rows -- normalized c_kv and roped k_pe -- are rounded to bfloat16 when
    computed, so every attention read (this forward's tokens included) sees the rounded rows.

CLI
  /usr/bin/python3 tests/ref/dsv3_ref.py --model DIR --ids 1,2,3 [--attn naive|absorb]
      --out FILE.npy                 -> float32 logits [S, vocab] (.npy format 1.0, '<f4')
  add --generate N to greedily generate N tokens (printed comma-separated on the last line
  of stdout); --out then holds [S+N-1, vocab] like `moerun generate --logits-out`.
"""
import argparse
import math
import os
import sys
from types import SimpleNamespace

import numpy as np

sys.dont_write_bytecode = True  # keep tests/ref free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402


# ----------------------------------------------------------------------------- config

def parse_config(c):
    """HF config dict -> Cfg namespace with defaults and derived values."""
    mt = c.get("model_type", "deepseek_v3")
    if mt not in ("deepseek_v3", "kimi_k2", "deepseek_v2"):
        raise ValueError("unsupported model_type %r" % mt)
    v2 = mt == "deepseek_v2"
    cfg = SimpleNamespace(
        model_type=mt,
        hidden=int(c["hidden_size"]),
        inter=int(c.get("intermediate_size", 0)),
        moe_inter=int(c.get("moe_intermediate_size", 0)),
        n_layers=int(c["num_hidden_layers"]),
        first_k_dense=int(c.get("first_k_dense_replace", 0)),
        moe_layer_freq=int(c.get("moe_layer_freq", 1) or 1),
        n_heads=int(c["num_attention_heads"]),
        n_routed=int(c.get("n_routed_experts") or 0),
        n_shared=int(c.get("n_shared_experts") or 0),
        top_k=int(c.get("num_experts_per_tok") or 0),
        n_group=int(c.get("n_group") or 1),
        topk_group=int(c.get("topk_group") or 1),
        topk_method=c.get("topk_method") or ("greedy" if v2 else "noaux_tc"),
        scoring_func=c.get("scoring_func") or ("softmax" if v2 else "sigmoid"),
        norm_topk_prob=bool(c.get("norm_topk_prob", False)),
        routed_scaling=float(c.get("routed_scaling_factor", 1.0) or 1.0),
        q_lora=int(c.get("q_lora_rank") or 0),
        kv_lora=int(c["kv_lora_rank"]),
        nope=int(c["qk_nope_head_dim"]),
        rope=int(c["qk_rope_head_dim"]),
        v_dim=int(c["v_head_dim"]),
        vocab=int(c["vocab_size"]),
        eps=float(c.get("rms_norm_eps", 1e-6)),
        theta=float(c.get("rope_theta", 10000.0)),
        max_pos=int(c.get("max_position_embeddings", 4096)),
        tie_embeddings=bool(c.get("tie_word_embeddings", False)),
    )
    if cfg.topk_method not in ("noaux_tc", "greedy", "group_limited_greedy"):
        raise ValueError("unsupported topk_method %r" % cfg.topk_method)
    if cfg.scoring_func not in ("sigmoid", "softmax"):
        raise ValueError("unsupported scoring_func %r" % cfg.scoring_func)
    if cfg.rope % 2:
        raise ValueError("qk_rope_head_dim must be even")
    rs = c.get("rope_scaling")
    cfg.yarn = None
    if rs:
        kind = rs.get("type", rs.get("rope_type"))
        if kind != "yarn":
            raise ValueError("unsupported rope_scaling type %r" % kind)
        y = SimpleNamespace(
            factor=float(rs["factor"]),
            orig_max=int(rs.get("original_max_position_embeddings", 4096)),
            beta_fast=float(rs.get("beta_fast", 32)),
            beta_slow=float(rs.get("beta_slow", 1)),
            mscale=float(rs.get("mscale", 1.0)),
            mscale_all_dim=float(rs.get("mscale_all_dim", 0.0)),
        )
        if cfg.max_pos > y.orig_max:
            cfg.yarn = y
    cfg.freq, cfg.rope_mscale = rope_frequencies(cfg)
    cfg.softmax_scale = (cfg.nope + cfg.rope) ** -0.5
    if cfg.yarn is not None:
        cfg.softmax_scale *= yarn_get_mscale(cfg.yarn.factor, cfg.yarn.mscale_all_dim) ** 2
    return cfg


def is_moe_layer(cfg, i):
    return cfg.n_routed > 0 and i >= cfg.first_k_dense and i % cfg.moe_layer_freq == 0


BF16 = False


def set_bf16(on):
    global BF16
    BF16 = bool(on)


KV_BF16 = False


def set_kv_bf16(on):
    global KV_BF16
    KV_BF16 = bool(on)


def bf16_round(a):
    """a rounded to the nearest bfloat16 (ties to even, via float32), as float64."""
    f = np.ascontiguousarray(np.asarray(a, dtype=np.float32))
    bits = f.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    out = rounded.view(np.float32).astype(np.float64)
    return np.where(np.isnan(f), np.nan, out)


def gemm_in(a):
    """The input of a product with a weight matrix: rounded in BF16 mode."""
    return bf16_round(a) if BF16 else a


def load_model(model_dir):
    config, W = st.load_dir(model_dir)
    if BF16:
        W = {k: bf16_round(v) if v.ndim == 2 and k != "model.embed_tokens.weight" else v
             for k, v in W.items()}
    return parse_config(config), W


# ----------------------------------------------------------------------------- basic ops

def linear(x, w):
    """nn.Linear without bias: x [..., in], w [out, in] -> [..., out]."""
    return gemm_in(x) @ gemm_in(w).T


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def silu(x):
    return x / (1.0 + np.exp(-x))


def swiglu_mlp(x, w_gate, w_up, w_down):
    """down(silu(gate(x)) * up(x))."""
    return linear(silu(linear(x, w_gate)) * linear(x, w_up), w_down)


def softmax(x, axis=-1):
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=axis, keepdims=True)


# ----------------------------------------------------------------------------- RoPE / YaRN

def yarn_get_mscale(scale, mscale):
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def yarn_correction_dim(n_rot, d, theta, orig_max):
    return d * math.log(orig_max / (n_rot * 2 * math.pi)) / (2 * math.log(theta))


def rope_frequencies(cfg):
    """-> (freq [d/2] float64, cos/sin multiplier m)."""
    d = cfg.rope
    i = np.arange(d // 2, dtype=np.float64)
    freq = 1.0 / cfg.theta ** (2 * i / d)
    y = cfg.yarn
    if y is None:
        return freq, 1.0
    low = max(math.floor(yarn_correction_dim(y.beta_fast, d, cfg.theta, y.orig_max)), 0)
    high = min(math.ceil(yarn_correction_dim(y.beta_slow, d, cfg.theta, y.orig_max)), d - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((i - low) / (high - low), 0.0, 1.0)
    smooth = 1.0 - ramp
    freq = freq / y.factor * (1.0 - smooth) + freq * smooth
    m = yarn_get_mscale(y.factor, y.mscale) / yarn_get_mscale(y.factor, y.mscale_all_dim)
    return freq, m


def rope_tables(cfg, positions):
    """positions [S] -> (cos, sin) [S, d/2], already multiplied by the YaRN mscale ratio."""
    ang = np.asarray(positions, dtype=np.float64)[:, None] * cfg.freq[None, :]
    return np.cos(ang) * cfg.rope_mscale, np.sin(ang) * cfg.rope_mscale


def apply_rope(x, cos, sin):
    """x [S, ..., d]; rotate interleaved pairs (x[2i], x[2i+1]) as complex x * e^{i angle}."""
    shape = (cos.shape[0],) + (1,) * (x.ndim - 2) + (cos.shape[1],)
    c, s = cos.reshape(shape), sin.reshape(shape)
    xe, xo = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = xe * c - xo * s
    out[..., 1::2] = xe * s + xo * c
    return out


# ----------------------------------------------------------------------------- MLA

def layer_weights(W, i):
    p = "model.layers.%d." % i
    return {k[len(p):]: v for k, v in W.items() if k.startswith(p)}


def mla_qkv(cfg, L, x, positions):
    """x [S, D] (already input-normed) -> q_nope [S,H,nope], q_pe [S,H,rope] (rotated),
    c [S, kv_lora] (kv_a_layernorm applied), k_pe [S, rope] (rotated)."""
    H = cfg.n_heads
    if cfg.q_lora:
        q = linear(rmsnorm(linear(x, L["self_attn.q_a_proj.weight"]),
                           L["self_attn.q_a_layernorm.weight"], cfg.eps),
                   L["self_attn.q_b_proj.weight"])
    else:
        q = linear(x, L["self_attn.q_proj.weight"])
    q = q.reshape(x.shape[0], H, cfg.nope + cfg.rope)
    cos, sin = rope_tables(cfg, positions)
    q_nope, q_pe = q[..., :cfg.nope], apply_rope(q[..., cfg.nope:], cos, sin)
    kv = linear(x, L["self_attn.kv_a_proj_with_mqa.weight"])
    c = rmsnorm(kv[:, :cfg.kv_lora], L["self_attn.kv_a_layernorm.weight"], cfg.eps)
    k_pe = apply_rope(kv[:, cfg.kv_lora:], cos, sin)
    if KV_BF16:  # what the cache holds, hence what every attention read sees
        c, k_pe = bf16_round(c), bf16_round(k_pe)
    return q_nope, q_pe, c, k_pe


def causal_mask(q_pos, k_pos):
    """[Sq, T] additive mask: 0 where key position <= query position, else -inf."""
    return np.where(np.asarray(k_pos)[None, :] <= np.asarray(q_pos)[:, None], 0.0, -np.inf)


def attention_naive(cfg, L, q_nope, q_pe, c, k_pe, q_pos, k_pos):
    """Expand latent into per-head k, v; standard causal attention. -> [S, H*v]."""
    H, T = cfg.n_heads, c.shape[0]
    kv = linear(c, L["self_attn.kv_b_proj.weight"]).reshape(T, H, cfg.nope + cfg.v_dim)
    k_nope, v = kv[..., :cfg.nope], kv[..., cfg.nope:]
    k = np.concatenate([k_nope, np.broadcast_to(k_pe[:, None, :], (T, H, cfg.rope))], axis=-1)
    q = np.concatenate([q_nope, q_pe], axis=-1)
    scores = np.einsum("shd,thd->hst", q, k) * cfg.softmax_scale + causal_mask(q_pos, k_pos)
    p = softmax(scores, axis=-1)
    out = np.einsum("hst,thd->shd", p, v)
    return out.reshape(q.shape[0], H * cfg.v_dim)


def attention_absorbed(cfg, L, q_nope, q_pe, c, k_pe, q_pos, k_pos):
    """q_nope absorbed through kv_b's nope rows; attention over latent c and k_pe;
    output through kv_b's v rows. -> [S, H*v]."""
    H = cfg.n_heads
    wkv_b = L["self_attn.kv_b_proj.weight"].reshape(H, cfg.nope + cfg.v_dim, cfg.kv_lora)
    w_uk, w_uv = wkv_b[:, :cfg.nope, :], wkv_b[:, cfg.nope:, :]
    q_lat = np.einsum("shd,hdc->shc", gemm_in(q_nope), w_uk)
    scores = (np.einsum("shc,tc->hst", q_lat, c) + np.einsum("shr,tr->hst", q_pe, k_pe))
    scores = scores * cfg.softmax_scale + causal_mask(q_pos, k_pos)
    p = softmax(scores, axis=-1)
    o_lat = np.einsum("hst,tc->shc", p, c)
    out = np.einsum("shc,hvc->shv", gemm_in(o_lat), w_uv)
    return out.reshape(q_nope.shape[0], H * cfg.v_dim)


ATTENTION = {"naive": attention_naive, "absorb": attention_absorbed}


def mla(cfg, L, x, positions, attn="naive", past=None):
    """x [S, D] normed. past: None or (c_past [T0, kv_lora], k_pe_past [T0, rope]) for
    positions 0..T0-1. Returns (o_proj output [S, D], (c_all, k_pe_all))."""
    q_nope, q_pe, c, k_pe = mla_qkv(cfg, L, x, positions)
    if past is not None:
        c = np.concatenate([past[0], c], axis=0)
        k_pe = np.concatenate([past[1], k_pe], axis=0)
    k_pos = np.arange(c.shape[0])
    o = ATTENTION[attn](cfg, L, q_nope, q_pe, c, k_pe, positions, k_pos)
    return linear(o, L["self_attn.o_proj.weight"]), (c, k_pe)


# ----------------------------------------------------------------------------- MoE

def topk_desc(v, k):
    """Indices of the k largest values, ties broken towards the lower index."""
    return np.argsort(-v, kind="stable")[:k]


def moe_gate(cfg, logits, bias=None):
    """logits [E] for one token (x @ gate.T) -> (expert ids [k], weights [k])."""
    E = logits.shape[0]
    if cfg.scoring_func == "sigmoid":
        scores = 1.0 / (1.0 + np.exp(-logits))
    else:
        scores = softmax(logits)
    sel = scores + bias if bias is not None else scores.copy()
    if cfg.topk_method in ("noaux_tc", "group_limited_greedy") and cfg.n_group > 1:
        if E % cfg.n_group:
            raise ValueError("n_routed_experts %d not divisible by n_group %d" % (E, cfg.n_group))
        g = sel.reshape(cfg.n_group, E // cfg.n_group)
        if bias is not None:
            group_score = -np.sort(-g, axis=1)[:, :2].sum(axis=1)
        else:
            group_score = g.max(axis=1)
        keep = topk_desc(group_score, cfg.topk_group)
        drop = np.ones(cfg.n_group, dtype=bool)
        drop[keep] = False
        g = np.where(drop[:, None], -np.inf, g)
        sel = g.reshape(E)
    idx = topk_desc(sel, cfg.top_k)
    w = scores[idx].copy()
    if cfg.model_type == "deepseek_v2":
        if cfg.norm_topk_prob and cfg.top_k > 1:
            w = w / (w.sum() + 1e-20)
        else:
            w = w * cfg.routed_scaling
    else:
        if cfg.norm_topk_prob and cfg.top_k > 1:
            w = w / (w.sum() + 1e-20)
        w = w * cfg.routed_scaling
    return idx, w


def moe_ffn(cfg, L, x):
    """x [S, D] normed -> sum_k w_k * expert_k(x) + shared_experts(x), [S, D]."""
    bias = L.get("mlp.gate.e_score_correction_bias")
    logits = linear(x, L["mlp.gate.weight"])
    routes = [moe_gate(cfg, logits[s], bias) for s in range(x.shape[0])]
    y = np.zeros_like(x)
    for e in sorted({int(i) for idx, _ in routes for i in idx}):
        rows = [(s, w[list(idx).index(e)]) for s, (idx, w) in enumerate(routes) if e in idx]
        tok = np.array([r[0] for r in rows])
        wt = np.array([r[1] for r in rows])
        p = "mlp.experts.%d." % e
        y[tok] += wt[:, None] * swiglu_mlp(x[tok], L[p + "gate_proj.weight"],
                                           L[p + "up_proj.weight"], L[p + "down_proj.weight"])
    if cfg.n_shared > 0:
        y += swiglu_mlp(x, L["mlp.shared_experts.gate_proj.weight"],
                        L["mlp.shared_experts.up_proj.weight"],
                        L["mlp.shared_experts.down_proj.weight"])
    return y


def dense_ffn(cfg, L, x):
    return swiglu_mlp(x, L["mlp.gate_proj.weight"], L["mlp.up_proj.weight"], L["mlp.down_proj.weight"])


# ----------------------------------------------------------------------------- model

def decoder_layer(cfg, L, i, x, positions, attn="naive", past=None):
    """One block. Returns (out [S, D], latent cache (c, k_pe) incl. past)."""
    a, cache = mla(cfg, L, rmsnorm(x, L["input_layernorm.weight"], cfg.eps), positions, attn, past)
    h = x + a
    hn = rmsnorm(h, L["post_attention_layernorm.weight"], cfg.eps)
    f = moe_ffn(cfg, L, hn) if is_moe_layer(cfg, i) else dense_ffn(cfg, L, hn)
    return h + f, cache


def embed(cfg, W, ids):
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 1 or np.any(ids < 0) or np.any(ids >= cfg.vocab):
        raise ValueError("token ids must be a 1-D list in [0, %d)" % cfg.vocab)
    return W["model.embed_tokens.weight"][ids].astype(np.float64)


def lm_logits(cfg, W, x):
    head = W.get("lm_head.weight")
    if head is None and cfg.tie_embeddings:
        head = W["model.embed_tokens.weight"]
    return linear(rmsnorm(x, W["model.norm.weight"], cfg.eps), head)


def as_cfg(cfg):
    """Accept either a parsed Cfg or the raw config.json dict."""
    return parse_config(cfg) if isinstance(cfg, dict) else cfg


def forward_logits(cfg, W, token_ids, attn="naive"):
    """Full causal recompute: token ids [S] -> float64 logits [S, vocab]."""
    cfg = as_cfg(cfg)
    x = embed(cfg, W, token_ids)
    pos = np.arange(x.shape[0])
    for i in range(cfg.n_layers):
        x, _ = decoder_layer(cfg, layer_weights(W, i), i, x, pos, attn)
    return lm_logits(cfg, W, x)


class IncrementalModel:
    """KV-cache (latent c + k_pe per layer) engine: feed() chunks of tokens in order."""

    def __init__(self, cfg, W, attn="naive"):
        cfg = as_cfg(cfg)
        self.cfg, self.W, self.attn = cfg, W, attn
        self.layers = [layer_weights(W, i) for i in range(cfg.n_layers)]
        self.cache = [None] * cfg.n_layers
        self.n_past = 0

    def feed(self, token_ids):
        """-> float64 logits [len(token_ids), vocab] for the new positions."""
        x = embed(self.cfg, self.W, token_ids)
        pos = np.arange(self.n_past, self.n_past + x.shape[0])
        for i, L in enumerate(self.layers):
            x, self.cache[i] = decoder_layer(self.cfg, L, i, x, pos, self.attn, self.cache[i])
        self.n_past += x.shape[0]
        return lm_logits(self.cfg, self.W, x)


def greedy_generate(cfg, W, prompt, n_new, attn="naive"):
    """Greedy decode n_new tokens (no EOS stop). -> (ids list, logits [S+n_new-1, vocab])."""
    cfg = as_cfg(cfg)
    m = IncrementalModel(cfg, W, attn)
    rows = [m.feed(prompt)]
    out = []
    for j in range(n_new):
        tok = int(np.argmax(rows[-1][-1]))
        out.append(tok)
        if j + 1 < n_new:
            rows.append(m.feed([tok]))
    return out, np.concatenate(rows, axis=0)


# ----------------------------------------------------------------------------- CLI

def parse_ids(s):
    return [int(t) for t in s.replace(" ", "").split(",") if t != ""]


def save_npy_f32(path, a):
    np.save(path, np.ascontiguousarray(a, dtype="<f4"), allow_pickle=False)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--ids", required=True, help="comma-separated prompt token ids")
    ap.add_argument("--attn", choices=["naive", "absorb"], default="naive")
    ap.add_argument("--out", help="write float32 logits .npy here")
    ap.add_argument("--generate", type=int, default=0, metavar="N",
                    help="greedily generate N tokens; last stdout line = generated ids")
    a = ap.parse_args(argv)
    cfg, W = load_model(a.model)
    ids = parse_ids(a.ids)
    if a.generate > 0:
        gen, logits = greedy_generate(cfg, W, ids, a.generate, a.attn)
    else:
        gen, logits = None, forward_logits(cfg, W, ids, a.attn)
    if a.out:
        save_npy_f32(a.out, logits)
    print("logits shape %s, last-row argmax %d" % (list(logits.shape), int(np.argmax(logits[-1]))))
    if gen is not None:
        print(",".join(str(t) for t in gen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
