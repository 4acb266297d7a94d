"""st.py -- minimal safetensors reader/writer in numpy (test tooling, not product).

Contract
--------
Reader
  load_dir(model_dir) -> (config: dict, tensors: dict name -> np.ndarray float64)
    * reads model_dir/config.json and either model_dir/model.safetensors or the
      shards listed in model_dir/model.safetensors.index.json ({"weight_map": {name: file}}).
    * dtypes F32, BF16, F16, F8_E4M3 (E4M3FN), F64 (and I32/I64/U8, converted to float64).
    * every FP8 tensor `X` must come with `X_scale_inv` (F32, [ceil(out/b0), ceil(in/b1)],
      b = config.quantization_config.weight_block_size, default [128, 128]); the returned
      `X` is dequantized: w[i, j] = fp8(code[i, j]) * scale_inv[i // b0, j // b1].
      The `*_scale_inv` tensors are consumed (not returned).
    * `__metadata__` is ignored; tensors `model.layers.N.*` with N >= num_hidden_layers
      (multi-token-prediction layers) are skipped without being read.
    * header and offsets are validated against the file size; errors raise ValueError
      naming the file and tensor.
  read_safetensors(path) -> dict name -> (dtype_str, shape, raw bytes)   (no conversion)
  decode(dtype_str, shape, raw) -> np.ndarray float64

Writer (for crafting test checkpoints, including hostile ones)
  write_model(dir, config, tensors, shards=1) -> list of written file paths
    tensors: dict name -> (dtype_str, np.ndarray)
      * "F32" / "F16" / "F64": cast (numpy round-to-nearest-even).
      * "BF16": rounded to float32, then round-to-nearest-even to bf16.
      * "F8_E4M3": a float array is quantized with quantize_fp8_blocks using the config's
        quantization_config.weight_block_size (the block size [128, 128] and a
        quantization_config entry are added to the written config.json if absent), and
        `name + "_scale_inv"` (F32) is emitted next to it; a uint8 array is written as raw
        codes verbatim (then supply the `_scale_inv` tensor yourself).
    shards == 1 -> model.safetensors; shards > 1 -> model-0000i-of-0000N.safetensors plus
    model.safetensors.index.json. A weight and its scale_inv always land in the same shard.
  quantize_fp8_blocks(w, block=(128, 128)) -> (codes uint8 [out, in], scale_inv f32 [nb0, nb1])
    scale_inv = amax(|block|) / 448 (1.0 for an all-zero block); codes = RNE(w / scale_inv)
    onto the E4M3FN grid, saturating at +-448.
  safetensors_bytes(entries, metadata=None, header_override=None) -> bytes
    entries: dict name -> (dtype_str, shape, raw bytes); low level, for hostile-input tests.

FP8 E4M3FN: 1 sign bit, 4 exponent bits (bias 7), 3 mantissa bits; exponent 0 = subnormal
(m/8 * 2^-6); no infinities; 0x7F and 0xFF are NaN; max finite 448.
"""
import json
import os
import re
import struct

import numpy as np

DTYPE_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1,
              "I64": 8, "I32": 4, "U8": 1}
MAX_HEADER_BYTES = 100 * 1024 * 1024
FP8_MAX = 448.0
DEFAULT_BLOCK = [128, 128]
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.")


# ----------------------------------------------------------------------------- FP8 E4M3FN

def _fp8_table():
    """Value of each of the 256 E4M3FN codes (float64)."""
    t = np.empty(256, dtype=np.float64)
    for code in range(256):
        sign = -1.0 if code & 0x80 else 1.0
        e = (code >> 3) & 0xF
        m = code & 0x7
        if e == 0xF and m == 0x7:
            t[code] = np.nan
        elif e == 0:
            t[code] = sign * (m / 8.0) * 2.0 ** -6
        else:
            t[code] = sign * (1.0 + m / 8.0) * 2.0 ** (e - 7)
    return t


FP8_TABLE = _fp8_table()
_FP8_POS = FP8_TABLE[:127]  # codes 0x00..0x7E: all finite non-negative values, ascending


def fp8_e4m3_decode(codes):
    """uint8 codes -> float64 values."""
    return FP8_TABLE[np.asarray(codes, dtype=np.uint8)]


def fp8_e4m3_encode(x):
    """float values -> uint8 E4M3FN codes, round-to-nearest-even, saturating to +-448.
    NaN -> 0x7F. Zero (of either sign) -> 0x00."""
    x = np.asarray(x, dtype=np.float64)
    a = np.minimum(np.abs(x), FP8_MAX)
    hi = np.searchsorted(_FP8_POS, a, side="left")          # _FP8_POS[hi-1] < a <= _FP8_POS[hi]
    hi = np.clip(hi, 0, 126)
    lo = np.maximum(hi - 1, 0)
    d_lo = a - _FP8_POS[lo]
    d_hi = _FP8_POS[hi] - a
    take_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (hi % 2 == 0))
    code = np.where(take_hi, hi, lo).astype(np.uint8)
    code = np.where(np.signbit(x) & (code != 0), code | 0x80, code).astype(np.uint8)
    return np.where(np.isnan(x), np.uint8(0x7F), code).astype(np.uint8)


def quantize_fp8_blocks(w, block=(128, 128)):
    """Block-wise FP8 quantization of a 2-D weight (DeepSeek-V3 checkpoint style).
    Returns (codes uint8 [out, in], scale_inv float32 [ceil(out/b0), ceil(in/b1)])."""
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2:
        raise ValueError("quantize_fp8_blocks needs a 2-D weight, got shape %s" % (w.shape,))
    b0, b1 = int(block[0]), int(block[1])
    n0, n1 = -(-w.shape[0] // b0), -(-w.shape[1] // b1)
    codes = np.zeros(w.shape, dtype=np.uint8)
    scale_inv = np.ones((n0, n1), dtype=np.float32)
    for bi in range(n0):
        for bj in range(n1):
            blk = w[bi * b0:(bi + 1) * b0, bj * b1:(bj + 1) * b1]
            amax = float(np.max(np.abs(blk)))
            s = np.float32(amax / FP8_MAX) if amax > 0 else np.float32(1.0)
            if s == 0:  # amax so small that amax/448 underflows float32
                s = np.float32(np.finfo(np.float32).tiny)
            scale_inv[bi, bj] = s
            codes[bi * b0:(bi + 1) * b0, bj * b1:(bj + 1) * b1] = fp8_e4m3_encode(blk / float(s))
    return codes, scale_inv


def dequantize_fp8_blocks(codes, scale_inv, block):
    """codes [out, in] uint8, scale_inv [nb0, nb1] -> float64 [out, in]."""
    b0, b1 = int(block[0]), int(block[1])
    vals = fp8_e4m3_decode(codes)
    s = np.asarray(scale_inv, dtype=np.float64)
    s_full = np.repeat(np.repeat(s, b0, axis=0), b1, axis=1)[:vals.shape[0], :vals.shape[1]]
    return vals * s_full


# ----------------------------------------------------------------------------- BF16

def bf16_bits_from_float(x):
    """float -> uint16 bf16 bits (via float32, round-to-nearest-even; NaN stays NaN)."""
    f = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    u = f.view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(f)
    r[nan] = ((u[nan] >> 16).astype(np.uint16) | 0x0040)
    return r


def bf16_bits_to_float(bits):
    return (np.asarray(bits, dtype=np.uint32) << 16).view(np.float32).astype(np.float64)


def round_to_bf16(x):
    """float -> float64 holding the value that BF16 storage would keep."""
    return bf16_bits_to_float(bf16_bits_from_float(x))


# ----------------------------------------------------------------------------- reader

def read_safetensors(path):
    """Parse one .safetensors file. Returns dict name -> (dtype, shape tuple, raw bytes)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError("%s: file shorter than 8 bytes" % path)
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or n + 8 > size:
            raise ValueError("%s: header length %d does not fit file of %d bytes" % (path, n, size))
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ValueError("%s: header is not valid JSON: %s" % (path, e))
        if not isinstance(header, dict):
            raise ValueError("%s: header is not a JSON object" % path)
        data_size = size - 8 - n
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype = info.get("dtype")
            shape = tuple(int(d) for d in info.get("shape", []))
            begin, end = (int(v) for v in info.get("data_offsets", [-1, -1]))
            if dtype not in DTYPE_SIZE:
                raise ValueError("%s: tensor %s has unsupported dtype %r" % (path, name, dtype))
            if any(d < 0 for d in shape):
                raise ValueError("%s: tensor %s has negative dim %s" % (path, name, shape))
            nbytes = DTYPE_SIZE[dtype] * int(np.prod(shape, dtype=object))
            if not (0 <= begin <= end <= data_size) or end - begin != nbytes:
                raise ValueError("%s: tensor %s offsets [%d, %d] bad for %s%s (%d bytes) in %d data bytes"
                                 % (path, name, begin, end, dtype, list(shape), nbytes, data_size))
            out[name] = (dtype, shape, begin, end)
        result = {}
        for name, (dtype, shape, begin, end) in out.items():
            f.seek(8 + n + begin)
            result[name] = (dtype, shape, f.read(end - begin))
        return result


def decode(dtype, shape, raw):
    """Raw little-endian bytes -> float64 array (FP8 returns code VALUES, no block scale)."""
    if dtype == "F32":
        a = np.frombuffer(raw, dtype="<f4").astype(np.float64)
    elif dtype == "F64":
        a = np.frombuffer(raw, dtype="<f8").astype(np.float64)
    elif dtype == "F16":
        a = np.frombuffer(raw, dtype="<f2").astype(np.float64)
    elif dtype == "BF16":
        a = bf16_bits_to_float(np.frombuffer(raw, dtype="<u2"))
    elif dtype == "F8_E4M3":
        a = fp8_e4m3_decode(np.frombuffer(raw, dtype=np.uint8))
    elif dtype == "I32":
        a = np.frombuffer(raw, dtype="<i4").astype(np.float64)
    elif dtype == "I64":
        a = np.frombuffer(raw, dtype="<i8").astype(np.float64)
    elif dtype == "U8":
        a = np.frombuffer(raw, dtype=np.uint8).astype(np.float64)
    else:
        raise ValueError("unsupported dtype %r" % dtype)
    return a.reshape(shape)


def _skipped_layer(name, n_layers):
    m = _LAYER_RE.match(name)
    return m is not None and n_layers is not None and int(m.group(1)) >= n_layers


def load_dir(model_dir):
    """Load config.json and all tensors of a HF-style checkpoint dir, dequantized to float64."""
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    n_layers = config.get("num_hidden_layers")
    qcfg = config.get("quantization_config") or {}
    block = qcfg.get("weight_block_size") or DEFAULT_BLOCK

    index_path = os.path.join(model_dir, "model.safetensors.index.json")
    single_path = os.path.join(model_dir, "model.safetensors")
    if os.path.exists(index_path):
        with open(index_path) as f:
            weight_map = json.load(f)["weight_map"]
        files = sorted(set(weight_map.values()))
        for fn in files:
            if os.path.basename(fn) != fn:
                raise ValueError("%s: shard name %r is not a plain file name" % (index_path, fn))
    elif os.path.exists(single_path):
        weight_map, files = None, ["model.safetensors"]
    else:
        raise ValueError("%s: no model.safetensors or model.safetensors.index.json" % model_dir)

    raw = {}
    for fn in files:
        path = os.path.join(model_dir, fn)
        for name, entry in read_safetensors(path).items():
            if weight_map is not None and weight_map.get(name) != fn:
                raise ValueError("%s: tensor %s not listed for this shard in the index" % (path, name))
            if name in raw:
                raise ValueError("%s: duplicate tensor %s" % (path, name))
            if not _skipped_layer(name, n_layers):
                raw[name] = entry
    if weight_map is not None:
        missing = [n for n in weight_map if n not in raw and not _skipped_layer(n, n_layers)]
        if missing:
            raise ValueError("%s: index lists tensors not found in shards: %s" % (model_dir, missing[:5]))

    tensors = {}
    for name, (dtype, shape, data) in raw.items():
        if name.endswith("_scale_inv"):
            continue
        w = decode(dtype, shape, data)
        if dtype == "F8_E4M3":
            sname = name + "_scale_inv"
            if sname not in raw:
                raise ValueError("FP8 tensor %s has no %s" % (name, sname))
            if len(shape) != 2:
                raise ValueError("FP8 tensor %s must be 2-D, has shape %s" % (name, list(shape)))
            sdt, sshape, sdata = raw[sname]
            want = (-(-shape[0] // block[0]), -(-shape[1] // block[1]))
            if tuple(sshape) != want:
                raise ValueError("%s has shape %s, expected %s for %s with block %s"
                                 % (sname, list(sshape), list(want), list(shape), block))
            s = decode(sdt, sshape, sdata)
            w = w * np.repeat(np.repeat(s, block[0], axis=0), block[1], axis=1)[:shape[0], :shape[1]]
        tensors[name] = w
    for name in raw:
        if name.endswith("_scale_inv") and name[:-len("_scale_inv")] not in raw:
            raise ValueError("%s has no matching FP8 tensor" % name)
    return config, tensors


# ----------------------------------------------------------------------------- writer

def encode(dtype, arr):
    """np array -> raw little-endian bytes for the given safetensors dtype (no FP8 scaling)."""
    a = np.asarray(arr)
    if dtype == "F32":
        return np.ascontiguousarray(a, dtype="<f4").tobytes()
    if dtype == "F64":
        return np.ascontiguousarray(a, dtype="<f8").tobytes()
    if dtype == "F16":
        return np.ascontiguousarray(a, dtype="<f2").tobytes()
    if dtype == "BF16":
        return np.ascontiguousarray(bf16_bits_from_float(a), dtype="<u2").tobytes()
    if dtype in ("F8_E4M3", "U8"):
        if a.dtype != np.uint8:
            raise ValueError("encode(%s) wants uint8 codes; quantize first" % dtype)
        return np.ascontiguousarray(a).tobytes()
    if dtype == "I32":
        return np.ascontiguousarray(a, dtype="<i4").tobytes()
    if dtype == "I64":
        return np.ascontiguousarray(a, dtype="<i8").tobytes()
    raise ValueError("unsupported dtype %r" % dtype)


def safetensors_bytes(entries, metadata=None, header_override=None):
    """entries: dict name -> (dtype, shape, raw bytes), written in the given order.
    header_override(header_dict) may mutate the header before serialisation (hostile tests)."""
    header, offset, blobs = {}, 0, []
    if metadata is not None:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, (dtype, shape, raw) in entries.items():
        header[name] = {"dtype": dtype, "shape": [int(d) for d in shape],
                        "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    if header_override is not None:
        header_override(header)
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hj += b" " * (-len(hj) % 8)
    return struct.pack("<Q", len(hj)) + hj + b"".join(blobs)


def _prepare_entries(config, tensors):
    """(dtype, array) dict -> ordered list of groups [(name, (dtype, shape, raw)), ...].
    A group is a weight plus its generated scale_inv, kept together when sharding."""
    qcfg = config.get("quantization_config") or {}
    block = qcfg.get("weight_block_size") or DEFAULT_BLOCK
    groups = []
    for name, (dtype, arr) in tensors.items():
        a = np.asarray(arr)
        if dtype == "F8_E4M3" and a.dtype != np.uint8:
            codes, sinv = quantize_fp8_blocks(a, block)
            groups.append([(name, ("F8_E4M3", codes.shape, encode("F8_E4M3", codes))),
                           (name + "_scale_inv", ("F32", sinv.shape, encode("F32", sinv)))])
        else:
            groups.append([(name, (dtype, a.shape, encode(dtype, a)))])
    return groups


def write_model(model_dir, config, tensors, shards=1):
    """Write config.json + safetensors (single or sharded). Returns written paths."""
    os.makedirs(model_dir, exist_ok=True)
    config = dict(config)
    if any(dt == "F8_E4M3" and np.asarray(a).dtype != np.uint8 for dt, a in tensors.values()):
        q = dict(config.get("quantization_config") or {})
        q.setdefault("quant_method", "fp8")
        q.setdefault("fmt", "e4m3")
        q.setdefault("activation_scheme", "dynamic")
        q.setdefault("weight_block_size", list(DEFAULT_BLOCK))
        config["quantization_config"] = q
    groups = _prepare_entries(config, tensors)
    paths = [os.path.join(model_dir, "config.json")]
    with open(paths[0], "w") as f:
        json.dump(config, f, indent=2)
    if shards <= 1:
        entries = {n: e for g in groups for n, e in g}
        p = os.path.join(model_dir, "model.safetensors")
        with open(p, "wb") as f:
            f.write(safetensors_bytes(entries, {"format": "pt"}))
        return paths + [p]
    # balance groups over shards by bytes, preserving order
    total = sum(len(e[2]) for g in groups for _, e in g)
    target = total / shards
    buckets, acc = [[] for _ in range(shards)], 0
    for g in groups:
        idx = min(int(acc / target) if target > 0 else 0, shards - 1)
        buckets[idx].append(g)
        acc += sum(len(e[2]) for _, e in g)
    weight_map = {}
    for i, bucket in enumerate(buckets):
        fn = "model-%05d-of-%05d.safetensors" % (i + 1, shards)
        entries = {n: e for g in bucket for n, e in g}
        for n in entries:
            weight_map[n] = fn
        p = os.path.join(model_dir, fn)
        with open(p, "wb") as f:
            f.write(safetensors_bytes(entries, {"format": "pt"}))
        paths.append(p)
    p = os.path.join(model_dir, "model.safetensors.index.json")
    with open(p, "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return paths + [p]
