"""Read float32 .npy files and compare them with or without numpy.

The GPU machine has Python but maybe not numpy; the checks only need the
largest absolute difference of two float32 arrays of the same shape.
    load(path) -> (shape, flat list or numpy array)
    max_abs_diff(a, b) -> float ('inf' when the shapes differ)
"""
import ast
import struct

try:
    import numpy as _np
except ImportError:  # pragma: no cover - exercised on machines without numpy
    _np = None


def load(path):
    if _np is not None:
        a = _np.load(path)
        return a.shape, a
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise ValueError(f"{path}: not an .npy file")
        major = f.read(2)[0]
        hlen = struct.unpack("<H" if major == 1 else "<I", f.read(2 if major == 1 else 4))[0]
        header = ast.literal_eval(f.read(hlen).decode("latin1"))
        if header["descr"] != "<f4" or header["fortran_order"]:
            raise ValueError(f"{path}: expected little-endian float32, C order")
        shape = tuple(header["shape"])
        n = 1
        for d in shape:
            n *= d
        data = struct.unpack(f"<{n}f", f.read(4 * n))
        return shape, data


def max_abs_diff(a, b):
    (sa, da), (sb, db) = a, b
    if sa != sb:
        return float("inf")
    if _np is not None:
        return float(_np.max(_np.abs(da - db))) if da.size else 0.0
    return max((abs(x - y) for x, y in zip(da, db)), default=0.0)


def rows(a, n):
    """The first n rows of a loaded 2-D array, as a loaded array."""
    shape, data = a
    if _np is not None:
        return (data[:n].shape, data[:n])
    width = shape[1]
    return ((n, width), data[: n * width])


def row_max_abs_diffs(a, b):
    """max |a - b| of each row of two loaded 2-D arrays of the same shape."""
    (sa, da), (sb, db) = a, b
    if sa != sb:
        raise ValueError(f"shapes differ: {sa} vs {sb}")
    if _np is not None:
        return [float(v) for v in _np.max(_np.abs(da - db), axis=1)]
    width = sa[1]
    return [max(abs(x - y) for x, y in zip(da[r * width:(r + 1) * width],
                                            db[r * width:(r + 1) * width]))
            for r in range(sa[0])]


def max_abs(a):
    _, data = a
    if _np is not None:
        return float(_np.max(_np.abs(data))) if data.size else 0.0
    return max((abs(x) for x in data), default=0.0)
