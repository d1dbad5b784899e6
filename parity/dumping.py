"""Reference side of the pipeline: run a reference plug-in with capture and write a dump; ingest hand dumps.

The reference model is reached through the plug-in contract (``parity.plugins``; default ``torch-reference``),
never imported here.
"""

from __future__ import annotations

import os
import platform
from typing import Callable

import numpy as np

from parity.dtypes import PRECISIONS, round_to_bf16
from parity.errors import ParityError
from parity.families import DEFAULT_FAMILY, get_family
from parity.inputs_io import load_tensor_file
from parity.runner import ModelRun, resolve_plugin
from parity.store import DumpWriter, sha256_file

# Checkpoints above this size are referenced by path + sha256 instead of being copied into the dump.
EXTERNAL_WEIGHTS_BYTES = 256 * 2**20
WEIGHT_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
MAX_THREADS = 1024


def _weights_header_check(fam, cfg, source: str):
    """Names and shapes of a weights file, checked against the config before any tensor is read."""
    from parity.weights import check_shapes

    return lambda header: check_shapes({k: s for k, (_, s) in header.items()}, fam.expected_state_dict_shapes(cfg),
                                       source)


def round_to_precision(weights: dict[str, np.ndarray], precision: str) -> dict[str, np.ndarray]:
    """Weights as the low-precision model holds them, returned as float32 (exact for bf16/fp16 values)."""
    if precision == "fp32":
        return weights
    if precision == "bf16":
        return {k: round_to_bf16(np.asarray(v, dtype=np.float32)) for k, v in weights.items()}
    return {k: np.asarray(v, dtype=np.float16).astype(np.float32) for k, v in weights.items()}


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ParityError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")


def resolve_reference(reference=None, reference_path: str | None = None, reference_options=None,
                      family: str | None = None):
    """The reference plug-in (default ``torch-reference``; see ``parity.runner.resolve_plugin``) and its options."""
    return resolve_plugin(reference, "reference", reference_path, reference_options, family)


def provenance(plugin, options: dict) -> tuple[dict, dict]:
    """``(versions, description)`` of a plug-in for a manifest: library versions, and who made the states."""
    described = dict(plugin.describe())
    described["options"] = dict(options)
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    versions.update(described.get("versions") or {})
    if described.get("git_commit"):
        versions[f"{plugin.name} checkout"] = described["git_commit"]
    return versions, described


def dump_reference(*, out: str, config: dict, inputs: dict, precision: str = "fp32",
                   weights: dict | None = None, weights_path: str | None = None, seed: int | None = None,
                   case: str | None = None, inputs_seed: int | None = None, force: bool = False,
                   family: str = DEFAULT_FAMILY, config_source: str = "config",
                   inputs_source: str = "inputs", progress: Callable[[str], None] | None = None,
                   threads: int = 1, stats_only: bool = False, reference=None, reference_path: str | None = None,
                   reference_options=None) -> dict:
    """Run the reference on ``inputs`` and write a dump to ``out``; returns a small summary dict.

    The reference is a plug-in (``reference``: a registered name, ``module:attr`` or a plug-in object; default
    ``torch-reference``), loaded from ``reference_path`` if given; its provenance goes into the manifest.

    Weights come from ``weights`` (in memory), ``weights_path`` (safetensors) or ``seed`` (random init).
    For bf16/fp16 the same model is also run in fp32 on the rounded weights (``states_fp32``), which the
    reference-relative tolerance criterion needs. ``threads`` fixes the reference's intra-op thread count
    (CPU matmul reductions depend on it), so the same dump is reproduced bit for bit on any machine.

    ``stats_only`` writes per-probe statistics, hashes and a sample of values instead of the states (see
    ``parity.stats``; for very large runs). Such a dump has no fp32 shadow run: a bf16/fp16 stats-only dump is
    judged with the absolute fallback bounds of its precision.
    """
    _check_precision(precision)
    fam = get_family(family)
    cfg = fam.parse_config(config, source=config_source)
    inputs = fam.normalize_inputs(inputs, cfg, source=inputs_source)
    if hasattr(fam, "check_memory"):
        fam.check_memory(cfg, inputs, precision, source=config_source)
    cfg_dict = cfg.to_dict()

    if not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise ParityError(f"--threads must be an integer in [1, {MAX_THREADS}], got {threads!r}; pass --threads 1 "
                          "(the default)")
    if weights is None and weights_path is not None:
        weights = load_tensor_file(weights_path, "weights", check=_weights_header_check(fam, cfg, weights_path))
    if weights is not None:  # names, shapes and values are checked before anything is written
        from parity.weights import check_state_dict
        check_state_dict(weights, fam.expected_state_dict_shapes(cfg), source=weights_path or "weights")
    if weights is None and seed is None:
        raise ParityError("no weights: pass --weights W.safetensors or --seed N for random weights")
    # the framework is imported only once the given files are known to be usable
    ref, ref_options = resolve_reference(reference, reference_path, reference_options, family)
    run = ModelRun(ref, family, cfg, side="reference")
    absent = [p.name for p in run.probes if p.reference.capture is None]
    if absent:
        raise ParityError(f"the reference plug-in {ref.name} does not produce {', '.join(absent[:5])}; a reference "
                          f"must hold every probe of the family (a subject may leave some out)")
    context = run.context(inputs)
    if weights is None:
        weights = ref.random_weights(family, cfg_dict, seed)
    weights_lowp = round_to_precision(weights, precision)
    versions_, described = provenance(ref, ref_options)

    seeds = {"weights": seed, "inputs": inputs_seed}
    say = progress or (lambda _msg: None)
    nonfinite: list[str] = []
    with DumpWriter(out, family=family, precision=precision, config=cfg_dict, seeds=seeds,
                    versions=versions_, case=case, producer="parity dump", force=force,
                    extra={"threads": threads, "reference": described}, stats_only=stats_only) as writer, \
            ref.session(threads):
        for name, arr in inputs.items():
            writer.add_input(name, arr)
        external = (weights_path is not None and os.path.getsize(weights_path) > EXTERNAL_WEIGHTS_BYTES)
        if external:
            writer.set_weights_file(weights_path, copy=False)
        else:
            writer.write_weights(weights_lowp, {k: WEIGHT_DTYPES[precision] for k in weights_lowp})

        def record(role: str) -> Callable[[str, np.ndarray, str], None]:
            def on_probe(name: str, array: np.ndarray, dtype: str) -> None:
                array = run.to_reference(name, array, context)
                if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
                    nonfinite.append(f"{role}/{name}")
                writer.add_state(name, array, dtype=dtype, role=role)
            return on_probe

        say(f"running the reference {ref.name} ({precision}) with capture")
        run.build(weights_lowp, precision, "CPU", ref_options)
        if ref.describe().get("notes"):  # what the build switched on (e.g. memory machinery)
            writer.extra["reference"] = {**described, "notes": ref.describe()["notes"]}
        run.capture(inputs, record("state"))
        run.model = None
        if precision != "fp32" and not stats_only and getattr(fam, "FP32_SHADOW", True):
            say(f"running the reference {ref.name} in fp32 on the same weights (for the reference-relative criterion)")
            run.build(weights_lowp, "fp32", "CPU", ref_options)
            run.capture(inputs, record("state_fp32"))
            run.model = None
        writer.extra["nonfinite_states"] = nonfinite
    return {"out": out, "probes": len(run.probes), "precision": precision, "nonfinite": nonfinite,
            "stats_only": bool(stats_only), "reference": ref.name}


def _check_states(fam, cfg, inputs, arrays, precision, legacy_dir) -> None:
    """Hand-dumped states must have the shapes the config and inputs imply, and float states must be values of
    the dump's precision (a float64 file of an fp32 run is stored as float32, exactly, or refused)."""
    expected = fam.probe_shapes(cfg, inputs) if hasattr(fam, "probe_shapes") else {}
    for name, arr in arrays.items():
        where = os.path.join(legacy_dir, f"{name}.npy")
        if name in expected and tuple(arr.shape) != tuple(expected[name]):
            raise ParityError(f"{where}: probe {name} has shape {tuple(arr.shape)} but the config and inputs imply "
                              f"{tuple(expected[name])}; save the tensor exactly as forward() produced it, or pass "
                              "the config it was made with")
        if arr.dtype.kind == "f" and precision in ("fp32", "fp16") and arr.dtype.itemsize > np.dtype(
                WEIGHT_DTYPES[precision]).itemsize and not name.endswith("_input"):
            low = np.asarray(arr).astype(WEIGHT_DTYPES[precision])
            if not np.array_equal(low.astype(arr.dtype), arr, equal_nan=True):
                raise ParityError(f"{where}: holds {arr.dtype} values that are not {WEIGHT_DTYPES[precision]} "
                                  f"values, so it was not produced by a {precision} run; save the {precision} "
                                  "tensor itself, or pass the matching --precision")


def ingest_legacy(legacy_dir: str, *, out: str, config: dict, weights_path: str, precision: str | None = None,
                  force: bool = False, family: str = DEFAULT_FAMILY, config_source: str = "config") -> dict:
    """Turn a folder of ``<probe>.npy`` files written by a hand-patched upstream forward() into a dump."""
    from parity.store import load_npy_checked

    if not os.path.isdir(legacy_dir):
        raise ParityError(f"{legacy_dir}: not a directory; pass the folder of <probe>.npy files")
    fam = get_family(family)
    cfg = fam.parse_config(config, source=config_source)
    expected = fam.probe_names(cfg)
    files = {f[:-4]: os.path.join(legacy_dir, f) for f in sorted(os.listdir(legacy_dir)) if f.endswith(".npy")}
    found = [n for n in expected if n in files]
    missing = [n for n in expected if n not in files]
    ignored = sorted(set(files) - set(expected))
    if not found:
        raise ParityError(f"{legacy_dir}: no probe files found; check the folder — it needs <probe>.npy files "
                          f"named like hidden_states_input.npy, hidden_states_0_block.npy")
    arrays = {n: load_npy_checked(files[n]) for n in found}
    input_probes = [f"{n}_input" for n in ("hidden_states", "timestep", "encoder_hidden_states", "attention_mask",
                                           "encoder_attention_mask")]
    lacking = [n for n in input_probes if n not in arrays]
    if lacking:
        raise ParityError(f"{legacy_dir}: missing {', '.join(n + '.npy' for n in lacking)}; the model inputs are "
                          f"needed to run the subject — save them from forward()'s arguments too (numpy.save)")
    inputs = fam.normalize_inputs({n[:-len("_input")]: arrays[n] for n in input_probes}, cfg,
                                  source=f"{legacy_dir} (*_input.npy)")
    if precision is None:
        precision = "fp16" if any(a.dtype == np.float16 for a in arrays.values()) else "fp32"
    _check_precision(precision)
    _check_states(fam, cfg, inputs, arrays, precision, legacy_dir)
    weights = load_tensor_file(weights_path, "weights", check=_weights_header_check(fam, cfg, weights_path))
    # The weights must fit the config exactly (names, shapes, finite values); the family knows the shapes
    # without torch, so ingest works where only the subject's framework is installed.
    from parity.weights import check_state_dict
    check_state_dict(weights, fam.expected_state_dict_shapes(cfg), source=weights_path)
    state_dtype = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[precision]
    nonfinite = []
    with DumpWriter(out, family=family, precision=precision, config=cfg.to_dict(), seeds={},
                    versions={"python": platform.python_version(), "numpy": np.__version__}, case=None,
                    producer="parity ingest", force=force,
                    extra={"ingested_from": os.path.abspath(legacy_dir), "missing_probes": missing,
                           "ignored_files": ignored}) as writer:
        for name, arr in inputs.items():
            writer.add_input(name, arr)
        if os.path.getsize(weights_path) > EXTERNAL_WEIGHTS_BYTES:
            writer.set_weights_file(weights_path, copy=False)
        else:
            writer.write_weights(round_to_precision(weights, precision),
                                 {k: WEIGHT_DTYPES[precision] for k in weights})
        for name in found:
            arr = arrays[name]
            if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                nonfinite.append(name)
            keep = arr.dtype.kind != "f" or (arr.dtype == np.float32 and name.endswith("_input"))
            writer.add_state(name, arr, dtype=None if keep else state_dtype)
        writer.extra["nonfinite_states"] = nonfinite
    return {"out": out, "found": found, "missing": missing, "ignored": ignored, "precision": precision,
            "nonfinite": nonfinite, "weights_sha256": sha256_file(weights_path)}
