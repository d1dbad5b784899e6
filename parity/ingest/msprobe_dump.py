"""Reading an msprobe (MindStudio Probe, ``mindstudio-probe``) dump directory, treating every byte as hostile.

Layout written by msprobe's ``PrecisionDebugger`` with ``"task": "tensor"``::

    DUMP_PATH/step<k>/rank<r>|proc<pid>/dump.json            {"task", "level", "framework", "data": {name: call}}
    DUMP_PATH/step<k>/rank<r>|proc<pid>/dump_tensor_data/     one file per tensor: .pt (PyTorch), .npy (MindSpore)

A module call (levels ``L0`` and ``mix``) is named ``Module.<dotted path>.<Class>.forward.<n>`` (``Cell.`` for
MindSpore), ``n`` counting that module's calls; its record holds ``input_args`` (positional, by index only),
``input_kwargs`` (by name), ``output`` (a list: one entry per returned value) and ``parameters``. Each tensor is
described by ``type``, ``dtype``, ``shape``, statistics (``Max``, ``Min``, ...) and ``data_name``, its file in
``dump_tensor_data/``. ``dump_data_dir`` (an absolute path on the machine that dumped) is never used.

Reads are bounded: ``dump.json`` up to ``MAX_DUMP_JSON_BYTES``; a tensor file only after its size agrees with the
shape and dtype ``dump.json`` gives (and those with ``MAX_TENSOR_BYTES``); file names are plain names inside
``dump_tensor_data/``; symlinks and special files are refused. ``.npy`` files are read without pickles
(``parity.store.load_npy_checked``); ``.pt`` files only with ``torch.load(weights_only=True)`` after their zip
directory has been checked, and refused clearly when torch is not installed. Loaded values are checked against
the ``Max``/``Min`` that ``dump.json`` recorded, so a file swapped for another of the same shape is caught.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import stat
import zipfile
from dataclasses import dataclass

import numpy as np

from parity import dtypes as _dt
from parity.errors import ParityError

MAX_DUMP_JSON_BYTES = 256 * 2**20
MAX_TENSOR_BYTES = 64 * 2**30
MAX_LISTED = 10_000               # directory entries looked at while locating dump.json
_PT_OVERHEAD = 64 * 2**10         # zip directory, pickle and alignment of one torch.save'd tensor
_PT_MAX_MEMBERS = 64
_MAX_RANK = 64

FRAMEWORKS = ("pytorch", "mindspore")
MODULE_KIND = {"pytorch": "Module", "mindspore": "Cell"}
TENSOR_SUFFIX = {"pytorch": ".pt", "mindspore": ".npy"}
DATA_DIR = "dump_tensor_data"
DUMP_JSON = "dump.json"
_STEP_RE = re.compile(r"step\d+")
_RANK_RE = re.compile(r"(rank\d*|proc\d+)")
_FILE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}")
_CALL_RE = re.compile(r"(?P<path>.+)\.(?P<cls>[A-Za-z_][A-Za-z0-9_]*)\.(?P<dir>forward|backward)\.(?P<n>\d+)")

_TORCH_DTYPES = {"torch.float64": "float64", "torch.float32": "float32", "torch.float16": "float16",
                 "torch.bfloat16": "bfloat16", "torch.int64": "int64", "torch.int32": "int32",
                 "torch.int16": "int16", "torch.int8": "int8", "torch.uint8": "uint8", "torch.bool": "bool"}
_MS_DTYPES = {"Float64": "float64", "Float32": "float32", "Float16": "float16", "BFloat16": "bfloat16",
              "Int64": "int64", "Int32": "int32", "Int16": "int16", "Int8": "int8", "UInt8": "uint8", "Bool": "bool"}
DTYPES = {"pytorch": _TORCH_DTYPES, "mindspore": _MS_DTYPES}

_REDUMP = "dump it again with msprobe"


@dataclass(frozen=True)
class TensorRef:
    """One tensor of a call as ``dump.json`` describes it (``file`` None: described but not saved)."""

    where: str          # e.g. "Module.model.transformer_blocks.0.BasicTransformerBlock.forward.0 output[0]"
    dtype: str          # project dtype name
    shape: tuple
    file: str | None    # data_name, a plain file name in dump_tensor_data/
    vmax: object = None
    vmin: object = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _dt.itemsize(self.dtype)


@dataclass(frozen=True)
class ModuleCall:
    name: str           # the dump.json key
    path: str           # dotted module path as msprobe saw it (with the wrapper's attribute, if any)
    cls: str
    index: int
    record: dict


class MsprobeDump:
    """One ``step*/rank*|proc*`` directory of an msprobe dump."""

    def __init__(self, rank_dir: str, meta: dict, calls: dict):
        self.dir = rank_dir
        self.json_path = os.path.join(rank_dir, DUMP_JSON)
        self.framework: str = meta["framework"]
        self.level: str = meta["level"]
        self.task: str = meta["task"]
        self.calls: dict[str, list[ModuleCall]] = calls    # module path -> forward calls, by call index

    @property
    def kind(self) -> str:
        return MODULE_KIND[self.framework]

    def describe(self) -> dict:
        return {"format": "msprobe", "path": os.path.abspath(self.dir), "framework": self.framework,
                "level": self.level, "task": self.task}

    # -- tensors ------------------------------------------------------------------------------------------------
    def tensor_ref(self, desc, where: str) -> TensorRef | None:
        """The TensorRef of a ``dump.json`` value, None if the value is not a tensor (None, int, dict...)."""
        if not (isinstance(desc, dict) and isinstance(desc.get("type"), str) and desc["type"].endswith("Tensor")):
            return None
        bad = f"{self.json_path}: {where}"
        dtype = DTYPES[self.framework].get(desc.get("dtype"))
        if dtype is None:
            raise ParityError(f"{bad}: unsupported dtype {str(desc.get('dtype'))[:40]!r}; only float, int and bool "
                              f"tensors are ingested ({_REDUMP} from an unmodified run)")
        shape = desc.get("shape")
        if not (isinstance(shape, list) and len(shape) <= 64
                and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
            raise ParityError(f"{bad}: invalid shape {str(shape)[:60]}; the dump.json is corrupt, {_REDUMP}")
        ref = TensorRef(where, dtype, tuple(shape), None, desc.get("Max"), desc.get("Min"))
        if ref.nbytes > MAX_TENSOR_BYTES:
            raise ParityError(f"{bad}: shape {list(shape)} is {ref.nbytes} bytes, above the "
                              f"{MAX_TENSOR_BYTES >> 30} GiB limit per tensor; the dump.json is corrupt, {_REDUMP}")
        name = desc.get("data_name")
        if name is None:
            return ref
        if not (isinstance(name, str) and _FILE_RE.fullmatch(name) and ".." not in name
                and name.endswith(TENSOR_SUFFIX[self.framework])):
            raise ParityError(f"{bad}: data_name {str(name)[:80]!r} is not a plain {TENSOR_SUFFIX[self.framework]} "
                              f"file name inside {DATA_DIR}/; refusing it (path traversal?); {_REDUMP}")
        return TensorRef(where, dtype, tuple(shape), name, desc.get("Max"), desc.get("Min"))

    def load(self, ref: TensorRef) -> tuple[np.ndarray, str]:
        """(array, project dtype name) of a saved tensor; bfloat16 comes back as exact float32 values."""
        full = os.path.join(self.dir, DATA_DIR, ref.file)
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            raise ParityError(f"{full}: missing, but {self.json_path} lists it for {ref.where}; copy the whole "
                              f"{DATA_DIR}/ folder of the dump") from None
        except OSError as exc:
            raise ParityError(f"{full}: cannot stat ({exc.strerror or exc}); check permissions") from None
        if not stat.S_ISREG(st.st_mode):
            raise ParityError(f"{full}: not a regular file (symlink, directory or device); refusing it — copy the "
                              f"dump with real files")
        if self.framework == "pytorch":
            arr = _load_pt(full, ref, st.st_size)
        else:
            arr = _load_npy(full, ref)
        _check_stats(full, ref, arr)
        return arr, ref.dtype


def _load_npy(full: str, ref: TensorRef) -> np.ndarray:
    from parity.store import load_npy_checked

    arr = load_npy_checked(full, mmap=True)  # header checked against the file size; no pickles, nothing read yet
    # msprobe saves MindSpore bfloat16 tensors upcast to float32 (numpy has no bfloat16)
    stored = "float32" if ref.dtype == "bfloat16" else ref.dtype
    if tuple(arr.shape) != ref.shape or _dt.dtype_name(arr.dtype) != stored:
        raise ParityError(f"{full}: holds {_dt.dtype_name(arr.dtype)} {list(arr.shape)} but dump.json says "
                          f"{ref.dtype} {list(ref.shape)} for {ref.where}; the dump is inconsistent, {_REDUMP}")
    out = np.array(arr, dtype=arr.dtype.newbyteorder("="), copy=True)
    if ref.dtype == "bfloat16" and np.any(out.view(np.uint32) & np.uint32(0xFFFF)):
        raise ParityError(f"{full}: dump.json says bfloat16 but the values are not bfloat16 numbers; the dump is "
                          f"inconsistent, {_REDUMP}")
    return out


def _load_pt(full: str, ref: TensorRef, size: int) -> np.ndarray:
    try:
        import torch
    except ImportError:
        raise ParityError(f"{full}: a PyTorch msprobe dump stores tensors as .pt files, which are read only with "
                          f"torch.load(weights_only=True); install torch (pip install torch) where you ingest, or "
                          f"ingest on the machine that made the dump") from None
    limit = ref.nbytes + _PT_OVERHEAD
    if size > limit:
        raise ParityError(f"{full}: {size} bytes, more than a {ref.dtype} {list(ref.shape)} tensor needs "
                          f"({ref.nbytes} + {_PT_OVERHEAD} bytes); dump.json and the file disagree, refusing it")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(full, flags)
        with os.fdopen(fd, "rb") as fh:
            raw = fh.read(limit + 1)
    except OSError as exc:
        raise ParityError(f"{full}: cannot read ({exc.strerror or exc}); check the file and its permissions") from None
    if len(raw) > limit:
        raise ParityError(f"{full}: grew while being read; refusing it")
    _check_pt_archive(full, raw, ref)
    import pickle

    try:
        obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ParityError(f"{full}: refused — its pickle is not weights_only-safe "
                          f"({' '.join(str(exc).split())[:120]}); only plain tensors saved by msprobe are read") from None
    except Exception as exc:  # a corrupt archive: torch raises RuntimeError, EOFError, ValueError, ...
        raise ParityError(f"{full}: torch.load(weights_only=True) cannot read it ({exc.__class__.__name__}: "
                          f"{' '.join(str(exc).split())[:100]}); {_REDUMP}") from None
    if not isinstance(obj, torch.Tensor):
        raise ParityError(f"{full}: holds a {type(obj).__name__}, not a tensor; only tensors saved by msprobe are "
                          f"read")
    got = _TORCH_DTYPES.get(str(obj.dtype))
    if got != ref.dtype or tuple(obj.shape) != ref.shape:
        raise ParityError(f"{full}: holds {obj.dtype} {list(obj.shape)} but dump.json says {ref.dtype} "
                          f"{list(ref.shape)} for {ref.where}; the dump is inconsistent, {_REDUMP}")
    if obj.dtype == torch.bfloat16:
        obj = obj.float()  # exact
    return np.array(obj.contiguous().numpy(), copy=True)


def _check_pt_archive(full: str, raw: bytes, ref: TensorRef) -> None:
    """torch.save's zip: members stored (not compressed), a small pickle, storage bytes == the tensor's bytes."""
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError):
        raise ParityError(f"{full}: not a torch.save zip archive (legacy or raw pickles are refused); "
                          f"{_REDUMP}") from None
    if len(infos) > _PT_MAX_MEMBERS:
        raise ParityError(f"{full}: a torch.save archive with {len(infos)} members; a tensor file has a handful, "
                          "refusing it")
    storage = 0
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED or info.file_size > len(raw):
            raise ParityError(f"{full}: member {info.filename[:60]!r} is compressed or larger than the file; "
                              "torch.save stores members uncompressed, refusing it")
        parts = info.filename.split("/")
        if parts[-1] == "data.pkl" and info.file_size > _PT_OVERHEAD:
            raise ParityError(f"{full}: its pickle is {info.file_size} bytes, far more than one tensor needs; "
                              "refusing it")
        if len(parts) >= 2 and parts[-2] == "data":
            storage += info.file_size
    if storage != ref.nbytes:
        raise ParityError(f"{full}: holds {storage} bytes of tensor storage but dump.json's {ref.dtype} "
                          f"{list(ref.shape)} needs {ref.nbytes}; the file and dump.json disagree, refusing it")


def _close(recorded, value) -> bool:
    return value == recorded or abs(value - recorded) <= 1e-6 * max(abs(value), abs(recorded))


def _check_stats(full: str, ref: TensorRef, arr: np.ndarray) -> None:
    """The file's max/min equal what msprobe recorded in dump.json when it saved it."""
    if arr.size == 0:
        return
    for label, recorded, fn in (("Max", ref.vmax, np.max), ("Min", ref.vmin, np.min)):
        if isinstance(recorded, bool) or not isinstance(recorded, (int, float)) or not math.isfinite(recorded):
            continue
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            return  # msprobe's statistics of a tensor with NaN/Inf are not comparable
        value = fn(arr).item()
        if not _close(float(recorded), float(value)):
            raise ParityError(f"{full}: its {label.lower()} is {value!r} but dump.json recorded {recorded!r} for "
                              f"{ref.where}; the file was replaced or corrupted, {_REDUMP}")


# ---- locating and parsing ------------------------------------------------------------------------------------
def _entries(path: str) -> list[str]:
    try:
        with os.scandir(path) as it:
            names = []
            for entry in it:
                names.append(entry.name)
                if len(names) > MAX_LISTED:
                    raise ParityError(f"{path}: more than {MAX_LISTED} entries; point to msprobe's dump_path (the "
                                      f"folder holding step*/)")
    except OSError as exc:
        raise ParityError(f"{path}: cannot list ({exc.strerror or exc}); check the path and permissions") from None
    return sorted(names)


def _is_real_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def find_rank_dirs(path: str) -> list[str]:
    """The ``step*/rank*|proc*`` directories holding a dump.json under ``path`` (which may itself be msprobe's
    dump_path, a step directory or a rank directory)."""
    if not os.path.isdir(path):
        raise ParityError(f"{path}: not a directory; pass msprobe's dump_path (the folder holding step*/)")
    if os.path.lexists(os.path.join(path, DUMP_JSON)):
        return [path]
    found = []
    steps = [path] if not any(_STEP_RE.fullmatch(n) for n in _entries(path)) else [
        os.path.join(path, n) for n in _entries(path) if _STEP_RE.fullmatch(n) and _is_real_dir(os.path.join(path, n))]
    for step in steps:
        for n in _entries(step):
            full = os.path.join(step, n)
            if _RANK_RE.fullmatch(n) and _is_real_dir(full) and os.path.lexists(os.path.join(full, DUMP_JSON)):
                found.append(full)
    return found


def _read_json(path: str):
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise ParityError(f"{path}: cannot stat ({exc.strerror or exc}); check the path") from None
    if not stat.S_ISREG(st.st_mode):
        raise ParityError(f"{path}: not a regular file (symlink, directory or device); refusing it")
    if st.st_size > MAX_DUMP_JSON_BYTES:
        raise ParityError(f"{path}: {st.st_size} bytes, above the {MAX_DUMP_JSON_BYTES >> 20} MiB limit for a "
                          f"dump.json; dump fewer modules (msprobe's \"list\"/\"scope\") or one step at a time")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as fh:
            raw = fh.read(MAX_DUMP_JSON_BYTES + 1)
    except OSError as exc:
        raise ParityError(f"{path}: cannot read ({exc.strerror or exc}); check permissions") from None
    if len(raw) > MAX_DUMP_JSON_BYTES:
        raise ParityError(f"{path}: grew above the {MAX_DUMP_JSON_BYTES >> 20} MiB limit while being read")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ParityError(f"{path}: not valid JSON ({' '.join(str(exc).split())[:100]}); {_REDUMP}") from None


def open_msprobe_dump(path: str) -> MsprobeDump:
    """Locate and parse the one dump.json under ``path``; module forward calls indexed by module path."""
    dirs = find_rank_dirs(path)
    if not dirs:
        raise ParityError(f"{path}: no msprobe dump here (expected step*/rank*|proc*/{DUMP_JSON}); pass msprobe's "
                          "dump_path, a step directory or a rank directory")
    if len(dirs) > 1:
        listed = ", ".join(os.path.relpath(d, path) for d in dirs[:4])
        raise ParityError(f"{path}: holds {len(dirs)} msprobe dumps ({listed}{' …' if len(dirs) > 4 else ''}); "
                          "pass the step*/rank* directory of the one to ingest")
    rank_dir = dirs[0]
    jpath = os.path.join(rank_dir, DUMP_JSON)
    data = _read_json(jpath)
    if not isinstance(data, dict) or not isinstance(data.get("data"), dict):
        raise ParityError(f"{jpath}: not an msprobe dump.json (no \"data\" object); {_REDUMP}")
    framework = data.get("framework")
    if framework not in FRAMEWORKS:
        raise ParityError(f"{jpath}: framework {str(framework)[:40]!r}; msprobe dumps of {' and '.join(FRAMEWORKS)} "
                          "are read")
    task, level = data.get("task"), data.get("level")
    if task != "tensor":
        raise ParityError(f"{jpath}: a {str(task)[:40]!r} dump holds no tensors; set \"task\": \"tensor\" in msprobe's "
                          "config.json (with \"level\": \"L0\") and dump again")
    if not isinstance(level, str):
        raise ParityError(f"{jpath}: no \"level\"; {_REDUMP}")
    kind = MODULE_KIND[framework]
    calls: dict[str, list[ModuleCall]] = {}
    for name, record in data["data"].items():
        if not name.startswith(kind + "."):
            continue  # API calls (L1, mix), debug saves
        m = _CALL_RE.fullmatch(name[len(kind) + 1:])
        if not m or m.group("dir") != "forward":
            continue
        if not isinstance(record, dict):
            raise ParityError(f"{jpath}: entry {name[:80]!r} is not an object; {_REDUMP}")
        calls.setdefault(m.group("path"), []).append(
            ModuleCall(name, m.group("path"), m.group("cls"), int(m.group("n")), record))
    for lst in calls.values():
        lst.sort(key=lambda c: c.index)
    return MsprobeDump(rank_dir, {"framework": framework, "level": level, "task": task}, calls)
