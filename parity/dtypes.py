"""Precision names, project dtype names and exact numpy bfloat16 helpers.

numpy has no bfloat16, so bf16 data lives either as ``uint16`` bit patterns (storage, exact) or as
float32 arrays whose values are representable in bf16 (computation).
"""

from __future__ import annotations

import numbers

import numpy as np

from parity.errors import ParityError

PRECISIONS = ("fp32", "bf16", "fp16")


def is_int(v) -> bool:
    """A Python or numpy integer, not a bool (JSON and config values: ``True`` is not a count)."""
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def is_number(v) -> bool:
    """A Python or numpy real number, not a bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))

# precision -> dtype name of the tensors a run at that precision produces
PRECISION_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}

# project dtype name -> little-endian numpy storage dtype (bfloat16 is stored as its uint16 bits)
_STORAGE = {
    "float64": "<f8",
    "float32": "<f4",
    "float16": "<f2",
    "bfloat16": "<u2",
    "int64": "<i8",
    "int32": "<i4",
    "int16": "<i2",
    "int8": "|i1",
    "uint64": "<u8",
    "uint32": "<u4",
    "uint16": "<u2",
    "uint8": "|u1",
    "bool": "|b1",
}
DTYPE_NAMES = tuple(_STORAGE)
FLOAT_DTYPES = frozenset({"float64", "float32", "float16", "bfloat16"})

# numpy kind+itemsize -> project name (bfloat16 never inferred: a uint16 array is "uint16")
_FROM_NUMPY = {np.dtype(v).newbyteorder("=").str[1:]: k for k, v in _STORAGE.items() if k != "bfloat16"}


def is_dtype_name(name) -> bool:
    return isinstance(name, str) and name in _STORAGE


def storage_dtype(name: str) -> np.dtype:
    """Numpy dtype used to store project dtype ``name`` on disk (bfloat16 -> little-endian uint16)."""
    try:
        return np.dtype(_STORAGE[name])
    except (KeyError, TypeError):
        raise ParityError(f"unknown dtype {name!r}; use one of {', '.join(DTYPE_NAMES)}") from None


def itemsize(name: str) -> int:
    return storage_dtype(name).itemsize


def dtype_name(dtype) -> str | None:
    """Project dtype name of a numpy dtype, or None when unsupported (object, complex, str, ...)."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        return None
    if dt.fields is not None or dt.subdtype is not None:
        return None
    return _FROM_NUMPY.get(dt.newbyteorder("=").str[1:])


def precision_dtype(precision: str) -> str:
    """dtype name for a precision ("bf16" -> "bfloat16"); ParityError for an unknown precision."""
    try:
        return PRECISION_DTYPES[precision]
    except (KeyError, TypeError):
        raise ParityError(
            f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}"
        ) from None


def _contiguous(x, dtype) -> np.ndarray:
    """C-contiguous array of ``dtype`` (copies only when needed; keeps 0-d shapes, unlike ascontiguousarray)."""
    return np.require(np.asarray(x, dtype=dtype), requirements="C")


def float32_to_bf16_bits(x) -> np.ndarray:
    """bf16 bit patterns (uint16) of ``x`` rounded to nearest-even; NaN stays (quiet) NaN, inf stays inf.

    Non-float32 input is first converted to float32.
    """
    a = _contiguous(x, np.float32)
    u = a.view(np.uint32)
    # RNE: add 0x7FFF plus the lowest kept bit, then truncate. Finite values that overflow become inf.
    rounded = u >> np.uint32(16)  # in-place steps below: one temporary for any size
    rounded &= np.uint32(1)
    rounded += np.uint32(0x7FFF)
    rounded += u
    rounded >>= np.uint32(16)
    nan = np.isnan(a)
    if nan.any():
        rounded[nan] = (u[nan] >> np.uint32(16)) | np.uint32(0x0040)
    return rounded.astype(np.uint16)


def bf16_bits_to_float32(bits) -> np.ndarray:
    """Exact float32 values of bf16 bit patterns (uint16 array)."""
    b = np.asarray(bits)
    if b.dtype != np.uint16:
        if b.dtype.kind not in "ui":
            raise ParityError(f"bf16 bit patterns must be uint16, got {b.dtype}; pass the raw uint16 bits")
        b = b.astype(np.uint16)
    out = b.astype(np.uint32)
    out <<= np.uint32(16)
    return out.view(np.float32)


def round_to_bf16(x) -> np.ndarray:
    """``x`` rounded (RNE) to bf16 precision, returned as float32."""
    return bf16_bits_to_float32(float32_to_bf16_bits(x))


def to_storage(array, dtype: str | None = None, where: str = "array") -> tuple[str, np.ndarray]:
    """(dtype name, C-contiguous little-endian storage array) for writing ``array`` as ``dtype``.

    ``dtype`` None keeps the array's own dtype. "bfloat16" rounds a float array (RNE) to bf16 bits or
    takes a uint16 array as raw bf16 bits. Other names cast within the same kind (float32 -> float16).
    No copy is made when the array is already stored as wanted. ``where`` prefixes error messages.
    """
    arr = np.asarray(array)
    src = dtype_name(arr.dtype)
    if src is None:
        raise ParityError(f"{where}: unsupported dtype {arr.dtype}; convert it to a numeric numpy dtype")
    if dtype is None:
        dtype = src
    if not is_dtype_name(dtype):
        raise ParityError(f"{where}: unknown dtype {dtype!r}; use one of {', '.join(DTYPE_NAMES)}")
    sdt = storage_dtype(dtype)
    if dtype == "bfloat16":
        if src in FLOAT_DTYPES:
            arr = float32_to_bf16_bits(arr)
        elif src != "uint16":
            raise ParityError(f"{where}: cannot store {src} data as bfloat16; pass a float array")
    elif dtype != src and not np.can_cast(arr.dtype, sdt, casting="same_kind"):
        raise ParityError(f"{where}: cannot store {src} data as {dtype}; pass a matching dtype")
    return dtype, _contiguous(arr, sdt)


def nonfinite_counts(array, dtype: str) -> tuple[int, int]:
    """(number of NaN, number of ±inf) in ``array`` stored as project dtype ``dtype``; chunked, no big copies."""
    if dtype not in FLOAT_DTYPES:
        return 0, 0
    flat = np.asarray(array).reshape(-1)
    n_nan = n_inf = 0
    step = 1 << 22
    for i in range(0, flat.size, step):
        chunk = flat[i : i + step]
        if dtype == "bfloat16":
            c = np.asarray(chunk, dtype=np.uint16)
            special = (c & 0x7F80) == 0x7F80
            if special.any():
                mant = (c & 0x007F) != 0
                n_nan += int(np.count_nonzero(special & mant))
                n_inf += int(np.count_nonzero(special & ~mant))
        else:
            n_nan += int(np.count_nonzero(np.isnan(chunk)))
            n_inf += int(np.count_nonzero(np.isinf(chunk)))
    return n_nan, n_inf
