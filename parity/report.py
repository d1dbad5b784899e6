"""Render a parity run result to ``parity.json`` / ``parity.md`` / ``parity.png``, and re-render it later.

The comparison engine hands ``write_report`` a plain dict; the same dict, written as ``parity.json``, is
what ``rerender``, ``load_result`` and ``load_baseline`` read back.

parity.json schema (``"schema": "opensora-parity/report@2"``; ``@1`` files are read and upgraded)
-------------------------------------------------------------------------------------------------
Top level::

    schema             "opensora-parity/report@2"
    case               str     name of the dumped case (e.g. "tiny-sparse")
    dump               str     path of the reference dump directory
    family             str     model family of the dump (e.g. "opensora_v13")
    subject            object  the subject plug-in: plugin, framework, versions, source, git_commit, options
    reference          object  who made the dump (from its manifest): plugin, framework, versions, source, git_commit
    precision          str     reference / tolerance-profile precision, e.g. "fp32"
    subject_precision  str     what the subject ran in: "fp32", "bf16-emulated", ...
    device             str     e.g. "CPU"
    mode               str     "isolated" | "accumulated" | "both"
    passed             bool    every probe passed (and nothing else failed)
    first_divergence   null | {"probe": str, "mode": str, "reference_path": str, "subject_path": str}
    created            str     ISO-8601 time
    versions           object  tool/library versions (free-form)
    duration_s         number
    tolerance_file     str     the tolerance profile file used
    tolerance_version  int
    baseline_factor    number  (optional) set by apply_baseline
    probes             list    in engine order (preserved), one entry per (probe, mode):
        name, mode, probe_class ("input"|"mask"|"embedding"|"block"|"output"), block (int|null),
        shape [int], max_abs, mean_abs, max_rel, cosine, rel_fro, p99_abs, frac_outside,
        min_passing_atol, nan_ref, nan_sub, inf_ref, inf_sub (ints), atol, rtol,
        criterion ("absolute"|"relative"|"meaning"|"stats"), lowp_ref_max_abs (number|null),
        baseline_max_abs (number|null), passed (bool), message (str; first line self-contained),
        reference_path, subject_path (str); optional compared_by (str, masks compared by meaning),
        baseline_regressed (bool) set by apply_baseline
    not_evaluated      list    {"name", "mode", "why"}: isolated-mode probes that could not be fed
    not_applicable     list    {"name", "why"}: probes the subject does not produce (its overlay says why)
    notes              list    (optional) one-line strings: stats-only caveats, and the subject plug-in's own
                               notes (its describe()["notes"], e.g. runtime patches), prefixed "subject: "
    blocks             list    {"block": int, "probe": str, "isolated_max_abs": number|null,
                                "accumulated_max_abs": number|null, "growth": number|null}
                               (growth = accumulated / isolated)

Encoding: the file is strict JSON (``allow_nan=False``), pretty-printed, probe order preserved. Floats
are JSON numbers; the non-finite floats NaN, +Inf and -Inf are written as the STRINGS ``"NaN"``,
``"Infinity"`` and ``"-Infinity"`` (so nothing is lost, unlike null); ``load_result`` turns them back into
floats for the numeric fields above. null means "not applicable / not measured".

Files: ``write_report(result, dir)`` -> parity.json, parity.md (first line: one-line verdict; probe table;
per-block table; failure messages), parity.png (per-block max |Δ|, isolated vs accumulated, log scale,
tolerance lines). ``write_summary(results, dir)`` -> summary.md (one line per dump, linking to
``<dir>/<basename of the dump dir>/parity.md``, where ``write_report`` put each dump's report).
``rerender(dir)`` rebuilds md/png (and summary.md) from the JSON. ``load_baseline`` / ``apply_baseline``
flag probes whose max_abs grew more than ``factor``× over a previous run, even inside tolerance.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable

from parity.errors import ParityError, shown
from parity.metrics import format_cosine, format_number
from parity.dtypes import is_int, is_number

SCHEMA = "opensora-parity/report@2"
_UPGRADABLE = {"opensora-parity/report@1": {"torch_path": "reference_path", "ms_path": "subject_path"}}
JSON_NAME = "parity.json"
MD_NAME = "parity.md"
PNG_NAME = "parity.png"
SUMMARY_NAME = "summary.md"
BASELINE_ZERO_TOL = 1e-30  # a baseline of exactly 0 regresses when the current max_abs exceeds this

PROBE_NUM_KEYS = ("max_abs", "mean_abs", "max_rel", "cosine", "rel_fro", "p99_abs", "frac_outside",
                  "min_passing_atol", "atol", "rtol", "lowp_ref_max_abs", "baseline_max_abs")
BLOCK_NUM_KEYS = ("isolated_max_abs", "accumulated_max_abs", "growth")
TOP_NUM_KEYS = ("duration_s", "baseline_factor")
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}

__all__ = ["SCHEMA", "write_report", "write_summary", "rerender", "load_result", "load_baseline",
           "apply_baseline", "summary_line", "render_markdown", "render_png", "render_summary",
           "dumps_result", "subdir_names", "copy_result"]


# ----------------------------------------------------------------------------------------------------------
# JSON

def _encode(obj: Any) -> Any:
    """JSON-ready copy: non-finite floats -> strings, numpy scalars/arrays -> Python, tuples -> lists."""
    if isinstance(obj, dict):
        return {str(k): _encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        if math.isnan(obj):
            return "NaN"
        if math.isinf(obj):
            return "Infinity" if obj > 0 else "-Infinity"
        return obj
    if isinstance(obj, Path):
        return str(obj)
    try:  # numpy scalars and arrays, without importing numpy here
        import numpy as np
        if isinstance(obj, np.bool_):
            return bool(obj)
        if isinstance(obj, np.integer):
            return int(obj)
        if isinstance(obj, np.floating):
            return _encode(float(obj))
        if isinstance(obj, np.ndarray):
            return _encode(obj.tolist())
    except ImportError:  # pragma: no cover
        pass
    raise ParityError(f"report: value of type {type(obj).__name__} cannot be written to {JSON_NAME}")


def dumps_result(result: dict) -> str:
    """The parity.json text of a result (strict JSON, NaN/Inf as strings)."""
    return json.dumps(_encode(result), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def _num(v: Any) -> Any:
    if isinstance(v, str) and v in _NONFINITE:
        return _NONFINITE[v]
    return v


def _decode(result: dict) -> dict:
    for k in TOP_NUM_KEYS:
        if k in result:
            result[k] = _num(result[k])
    for p in result.get("probes", []):
        for k in PROBE_NUM_KEYS:
            if k in p:
                p[k] = _num(p[k])
    for b in result.get("blocks", []):
        for k in BLOCK_NUM_KEYS:
            if k in b:
                b[k] = _num(b[k])
    return result


def _upgrade(result: Any) -> Any:
    """A report of an earlier schema in today's form (renamed keys), as read from disk."""
    renames = _UPGRADABLE.get(result.get("schema")) if isinstance(result, dict) else None
    if renames is None:
        return result
    for holder in [result.get("first_divergence")] + list(result.get("probes") or []):
        if isinstance(holder, dict):
            for old, new in renames.items():
                if old in holder:
                    holder[new] = holder.pop(old)
    result["schema"] = SCHEMA
    return result


def _validate(result: Any, label: str) -> dict:
    if not isinstance(result, dict):
        raise ParityError(f"{label}: a report must be a JSON object, got {type(result).__name__}")
    if result.get("schema") != SCHEMA:
        raise ParityError(f"{label}: schema is {shown(result.get('schema'), 60)}, expected {SCHEMA!r}; pass a parity.json "
                          "written by 'parity compare --report'")
    for key, typ in (("case", str), ("passed", bool), ("probes", list), ("blocks", list)):
        if key not in result:
            raise ParityError(f"{label}: missing key {key!r}")
        if not isinstance(result[key], typ):
            raise ParityError(f"{label}: {key!r} must be {typ.__name__}, got {type(result[key]).__name__}")
    for i, p in enumerate(result["probes"]):
        if not isinstance(p, dict):
            raise ParityError(f"{label}: probes[{i}] must be an object")
        for key, typ in (("name", str), ("mode", str), ("passed", bool)):
            if not isinstance(p.get(key), typ):
                raise ParityError(f"{label}: probes[{i}] needs {key!r} ({typ.__name__})")
        for key in PROBE_NUM_KEYS:
            v = p.get(key)
            if v is not None and not is_number(_num(v)):
                raise ParityError(f"{label}: probes[{i}] ({p['name']}) {key!r} must be a number or null, "
                                  f"got {v!r}")
    for i, b in enumerate(result["blocks"]):
        if not isinstance(b, dict) or not is_int(b.get("block")):
            raise ParityError(f"{label}: blocks[{i}] must be an object with an integer 'block'")
        for key in BLOCK_NUM_KEYS:
            v = b.get(key)
            if v is not None and not is_number(_num(v)):
                raise ParityError(f"{label}: blocks[{i}] {key!r} must be a number or null, got {v!r}")
    fd = result.get("first_divergence")
    if fd is not None and not (isinstance(fd, dict) and isinstance(fd.get("probe"), str)):
        raise ParityError(f"{label}: first_divergence must be null or an object with a 'probe'")
    return result


def load_result(path: str | Path) -> dict:
    """Read and validate a parity.json (file, or a directory holding one); NaN/Inf strings -> floats."""
    from parity.jsonio import load_json

    p = Path(path)
    if p.is_dir():
        p = p / JSON_NAME
    data = load_json(p, "report", "pass a parity.json written by 'parity compare --report'")
    return _decode(_validate(_upgrade(data), str(p)))


# ----------------------------------------------------------------------------------------------------------
# markdown

def _f(x: Any) -> str:
    return format_number(_num(x)) if x is not None else "—"


def _shape(s: Any) -> str:
    if s is None:
        return "—"
    if isinstance(s, (list, tuple)):
        return "×".join(str(int(v)) for v in s) if len(s) else "scalar"
    return str(s)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return f"`{_cell(text)}`"


def summary_line(result: dict) -> str:
    """``**PASS** tiny-sparse fp32 (CPU, both): 62/62 probes within tolerance`` (+ first divergence)."""
    probes = result.get("probes", [])
    ok = sum(1 for p in probes if p.get("passed"))
    prec = result.get("precision") or "?"
    sub = result.get("subject_precision")
    what = f"{result.get('case', '?')} {prec}" if not sub or sub == prec else \
        f"{result.get('case', '?')} {sub} vs {prec} reference"
    where = ", ".join(str(x) for x in (result.get("device"), result.get("mode")) if x)
    line = f"{'**PASS**' if result.get('passed') else '**FAIL**'} {what}"
    if where:
        line += f" ({where})"
    line += f": {ok}/{len(probes)} probes within tolerance"
    if result.get("comparison") == "stats-only":
        line += " (stats-only comparison)"
    fd = result.get("first_divergence")
    if fd:
        line += f"; first divergence: {fd.get('probe')} ({fd.get('mode', '?')})"
        if fd.get("reference_path") or fd.get("subject_path"):
            line += f" — reference {fd.get('reference_path') or '?'} / subject {fd.get('subject_path') or '?'}"
    return line


def render_markdown(result: dict, *, png_name: str | None = PNG_NAME) -> str:
    """The whole parity.md text; its first line is ``summary_line(result)``."""
    out = [summary_line(result), ""]
    meta = []
    for key, label in (("dump", "dump"), ("created", "created"), ("duration_s", "duration")):
        v = result.get(key)
        if v is not None:
            meta.append(f"{label}: {format_number(v) + ' s' if key == 'duration_s' else _cell(v)}")
    if result.get("tolerance_file"):
        meta.append(f"tolerances: {_cell(result['tolerance_file'])} (version {result.get('tolerance_version', '?')})")
    if result.get("baseline_factor") is not None:
        meta.append(f"baseline: max abs may grow at most {format_number(result['baseline_factor'])}×")
    for side in ("subject", "reference"):
        who = result.get(side) or {}
        if who.get("plugin"):
            origin = f" from {who['source']}" if who.get("source") else ""
            commit = f" at {who['git_commit']}" if who.get("git_commit") else ""
            options = ", ".join(f"{k}={v}" for k, v in (who.get("options") or {}).items())
            meta.append(f"{side}: {_cell(who['plugin'])} ({_cell(who.get('framework', '?'))}){_cell(origin)}"
                        f"{_cell(commit)}" + (f", options {_cell(options)}" if options else ""))
    versions = result.get("versions") or {}
    if versions:
        meta.append("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    for note in result.get("notes") or []:
        meta.append(f"note: {_cell(note)}")
    out += [f"- {m}" for m in meta]
    if meta:
        out.append("")
    if png_name:
        out += [f"![{'per-step errors' if result.get('steps') else 'per-block max abs error'}]({png_name})", ""]
    if result.get("steps"):
        from parity.report_steps import render_steps_markdown
        out += render_steps_markdown(result["steps"])

    out += ["| probe | mode | shape | max abs | mean abs | max rel | cosine | atol | rtol | pass |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|:---:|"]
    for p in result.get("probes", []):
        mark = "✅" if p.get("passed") else "❌"
        if p.get("criterion") == "relative":
            mark += " rel"
        if p.get("baseline_regressed"):
            mark += " ↑base"
        out.append(f"| {_code(p.get('name', '?'))} | {_cell(p.get('mode', ''))} | {_shape(p.get('shape'))} | "
                   f"{_f(p.get('max_abs'))} | {_f(p.get('mean_abs'))} | {_f(p.get('max_rel'))} | "
                   f"{format_cosine(_num(p.get('cosine')))} | {_f(p.get('atol'))} | {_f(p.get('rtol'))} | {mark} |")
    if not result.get("probes"):
        out.append("| (no probes) | | | | | | | | | |")
    out.append("")

    blocks = result.get("blocks") or []
    if blocks:
        out += ["Per-block max abs error (growth = accumulated / isolated):", "",
                "| block | isolated max abs | accumulated max abs | growth |", "|---:|---:|---:|---:|"]
        for b in blocks:
            g = b.get("growth")
            gs = "—" if g is None else f"{format_number(_num(g))}×"
            label = b.get("block") if len(blocks) == len({x.get("block") for x in blocks}) else \
                f"{b.get('block')} ({_code(b.get('probe', '?'))})"
            out.append(f"| {label} | {_f(b.get('isolated_max_abs'))} | "
                       f"{_f(b.get('accumulated_max_abs'))} | {gs} |")
        out.append("")

    skipped = [(p, "not evaluated") for p in result.get("not_evaluated") or []] + \
        [(p, "not applicable") for p in result.get("not_applicable") or []]
    if skipped:
        out += ["Not compared:", ""]
        out += [f"- {_code(p.get('name', '?'))} {what}{' (' + _cell(p['mode']) + ')' if p.get('mode') else ''}: "
                f"{_cell(p.get('why', ''))}" for p, what in skipped]
        out.append("")

    failed = [p for p in result.get("probes", []) if not p.get("passed")]
    if failed:
        out += ["## Failures", ""]
        for p in failed:
            out.append(f"### {_code(p.get('name', '?'))} ({_cell(p.get('mode', ''))})")
            paths = [f"reference `{p['reference_path']}`" if p.get("reference_path") else "",
                     f"subject `{p['subject_path']}`" if p.get("subject_path") else ""]
            paths = [x for x in paths if x]
            if paths:
                out += ["", " / ".join(paths)]
            if p.get("compared_by"):
                out += ["", f"compared by {_cell(p['compared_by'])}"]
            if p.get("criterion") == "relative":
                out += ["", f"relative criterion: subject max abs {_f(p.get('max_abs'))} vs torch low-precision "
                            f"max abs {_f(p.get('lowp_ref_max_abs'))}"]
            msg = str(p.get("message") or "").strip()
            if msg:
                out += ["", "```", msg.replace("```", "'''"), "```"]
            out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


# ----------------------------------------------------------------------------------------------------------
# PNG

def _block_positions(rows: list) -> list[tuple[float, dict]]:
    """x position of each block row: its block index, spread within the index when a block index has several
    kinds of block (STDiT3: spatial at i, temporal at i + 0.5)."""
    rows = [b for b in rows if is_int(b.get("block"))]
    per_block: dict[int, list] = {}
    for b in rows:
        per_block.setdefault(int(b["block"]), []).append(b)
    kinds = max((len(v) for v in per_block.values()), default=1)
    out = []
    for i in sorted(per_block):
        out += [(i + k / kinds, b) for k, b in enumerate(per_block[i])]
    return out


def render_png(result: dict, path: str | Path) -> Path:
    """Per-block max |Δ| (isolated vs accumulated) on a log scale, with the block tolerance lines, written to
    the new or tool-written file ``path`` (see ``write_report`` for the ownership rule)."""
    path = Path(path)
    with _owned(path.parent) as d:
        d.write(path.name, png_bytes(result))
    return path


def png_bytes(result: dict) -> bytes:
    """The PNG of ``render_png``, in memory (matplotlib never opens the output file itself)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    prec = result.get("precision") or "?"
    sub = result.get("subject_precision")
    title = f"{result.get('case', '?')} — {prec if not sub or sub == prec else f'{sub} vs {prec}'}"
    title += f" ({result.get('device') or '?'}) — {'PASS' if result.get('passed') else 'FAIL'}"
    if result.get("steps"):
        from parity.report_steps import draw_steps
        draw_steps(fig, result)
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": None})
        return buf.getvalue()
    ax = fig.add_subplot(1, 1, 1)
    ax.set_title(title, fontsize=10)

    blocks = _block_positions(result.get("blocks") or [])
    series = {}
    for mode in ("isolated", "accumulated"):
        pts = []
        for x, b in blocks:
            v = b.get(f"{mode}_max_abs")
            v = None if v is None else float(_num(v))
            if v is not None and not math.isnan(v):
                pts.append((x, v))
        if pts:
            series[mode] = pts
    positives = [v for pts in series.values() for _, v in pts if 0 < v < math.inf]
    tols = {}
    for p in result.get("probes", []):
        if p.get("probe_class") == "block" and p.get("mode") in ("isolated", "accumulated"):
            a = p.get("atol")
            a = None if a is None else float(_num(a))
            if a is not None and 0 < a < math.inf:
                tols[p["mode"]] = max(a, tols.get(p["mode"], 0.0))
    lo_ref = min(positives + list(tols.values())) if positives or tols else 1e-6
    floor = lo_ref / 10.0
    hi_ref = max(positives + list(tols.values())) if positives or tols else 1.0

    if not series:
        ax.text(0.5, 0.5, "no per-block data", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        style = {"isolated": ("tab:blue", "o", "-"), "accumulated": ("tab:orange", "s", "-")}
        x_of = {b.get("probe", b["block"]): x for x, b in blocks}
        failing = {(p.get("mode"), x_of.get(p.get("name"), p.get("block"))) for p in result.get("probes", [])
                   if not p.get("passed") and is_int(p.get("block"))}
        for mode, pts in series.items():
            color, marker, ls = style[mode]
            xs = [x for x, _ in pts]
            ys = [min(max(v, floor), hi_ref * 10) for _, v in pts]
            ax.plot(xs, ys, ls, color=color, marker=marker, label=f"{mode} max |Δ|", markersize=5)
            zx = [x for x, v in pts if v <= 0]
            if zx:
                ax.plot(zx, [floor] * len(zx), linestyle="none", marker=marker, markerfacecolor="white",
                        color=color, label=f"{mode}: exactly 0 (drawn at {floor:.0e})")
            inf_x = [x for x, v in pts if v == math.inf]
            if inf_x:
                ax.plot(inf_x, [hi_ref * 10] * len(inf_x), linestyle="none", marker="^", color=color,
                        label=f"{mode}: inf")
            fx = [(x, y) for (x, v), y in zip(pts, ys) if (mode, x) in failing]
            if fx:
                ax.plot([x for x, _ in fx], [y for _, y in fx], linestyle="none", marker="x", color="red",
                        markersize=9, label=f"{mode}: failed")
        for mode, a in tols.items():
            color = style[mode][0]
            ax.axhline(a, color=color, linestyle="--", linewidth=1, alpha=0.8, label=f"atol {mode} = {a:g}")
        ax.set_yscale("log")
        ax.set_xlabel("block")
        ax.set_ylabel("max |sub − ref|")
        all_x = sorted({int(x) for pts in series.values() for x, _ in pts})
        if len(all_x) <= 40:
            ax.set_xticks(all_x)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------------
# files

_OWN_FIX = "move it away (or delete it), or choose another --report directory"


def _legacy_report_file(d, name: str, fd: int, st) -> bool:
    """A report directory written before the ownership record existed: its parity.json has the report schema,
    its parity.md is exactly the rendering of that parity.json, and parity.png is a PNG; summary.md starts with
    the summary verdict line. Anything else (a user's notes) is not recognised."""
    from parity.store import fsio

    if st.st_size > 64 * 2**20:
        return False
    data = fsio.read_exact(fd, st.st_size, name)
    if name == JSON_NAME:
        try:
            return json.loads(data).get("schema") == SCHEMA
        except (ValueError, AttributeError):
            return False
    if name == SUMMARY_NAME:
        return re.match(rb"\*\*(PASS|FAIL)\*\* \d+/\d+ dumps passed\n", data) is not None
    try:
        result = load_result(os.path.join(d.path, JSON_NAME))
    except ParityError:
        return False
    if name == MD_NAME:
        return data == render_markdown(result).encode("utf-8")
    return name == PNG_NAME and data.startswith(b"\x89PNG\r\n\x1a\n")


def _owned(report_dir):
    from parity.store.fsio import OwnedDir

    d = OwnedDir(report_dir, fix=_OWN_FIX)
    d.legacy = lambda name, fd, st: _legacy_report_file(d, name, fd, st)
    return d


def _render_files(result: dict, d) -> list[Path]:
    d.write(MD_NAME, render_markdown(result).encode("utf-8"))
    d.write(PNG_NAME, png_bytes(result))
    return [Path(d.path) / MD_NAME, Path(d.path) / PNG_NAME]


def check_report_dir(report_dir: str | Path, subdirs: Iterable[str] = ()) -> None:
    """Refuse, before any work, a report directory whose report files exist but were not written by this tool
    (or were edited since): ``parity compare --report`` never overwrites them."""
    from parity.store.fsio import OwnedDir

    d = Path(report_dir)
    targets = [(d, (JSON_NAME, MD_NAME, PNG_NAME, SUMMARY_NAME))] + [(d / s, (JSON_NAME, MD_NAME, PNG_NAME))
                                                                    for s in subdirs]
    for folder, names in targets:
        if not os.path.lexists(folder):
            continue
        with _owned(folder) as owned:
            owned.check_writable(names)


def write_report(result: dict, report_dir: str | Path) -> list[Path]:
    """Write parity.json, parity.md and parity.png into ``report_dir``; returns the three paths.

    Files are created exclusively and never through a symlink; an existing one is replaced only if this tool
    wrote it (the directory's ``.parity-files.json`` record, see ``parity.store.fsio.OwnedDir``)."""
    _validate(result, f"report for {result.get('case', '?') if isinstance(result, dict) else '?'}")
    text = dumps_result(result)
    with _owned(report_dir) as d:
        d.check_writable((JSON_NAME, MD_NAME, PNG_NAME))
        d.write(JSON_NAME, text.encode("utf-8"))
        return [Path(d.path) / JSON_NAME] + _render_files(_decode(json.loads(text)), d)


def _slug(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(name)).strip("-.")
    return s or "dump"


def subdir_names(results: Iterable[dict]) -> list[str]:
    """Default per-dump subdirectory names: the basename of each result's ``dump`` directory (the case
    name when there is none), made path-safe and unique (``-2``, ``-3`` suffixes)."""
    names: list[str] = []
    for r in results:
        dump = str(r.get("dump") or "").rstrip("/\\")
        base = _slug(os.path.basename(os.path.normpath(dump)) if dump else r.get("case", "dump"))
        name, i = base, 2
        while name in names:
            name, i = f"{base}-{i}", i + 1
        names.append(name)
    return names


def render_summary(results: list[dict], subdirs: list[str]) -> str:
    n_ok = sum(1 for r in results if r.get("passed"))
    verdict = "**PASS**" if results and n_ok == len(results) else "**FAIL**"
    lines = [f"{verdict} {n_ok}/{len(results)} dumps passed", ""]
    for r, sub in zip(results, subdirs):
        lines.append(f"- {summary_line(r)} — [report]({sub}/{MD_NAME})")
    return "\n".join(lines) + "\n"


def write_summary(results: list[dict], report_dir: str | Path, *, subdirs: list[str] | None = None,
                  write_reports: bool = False) -> Path:
    """Write ``report_dir/summary.md`` (one line per dump, linking ``<subdir>/parity.md``); returns its path.

    ``subdirs`` default to ``subdir_names(results)`` (basename of each dump directory) — the layout where
    each dump's report was written with ``write_report(result, report_dir/<subdir>)``. With
    ``write_reports=True`` those per-dump reports are (re)written here too.
    """
    d = Path(report_dir)
    results = list(results)
    for r in results:
        _validate(r, f"report for {r.get('case', '?') if isinstance(r, dict) else '?'}")
    subdirs = list(subdirs) if subdirs is not None else subdir_names(results)
    if len(subdirs) != len(results):
        raise ParityError(f"{d}: {len(results)} results but {len(subdirs)} subdirectory names")
    if write_reports:
        for r, sub in zip(results, subdirs):
            write_report(r, d / sub)
    with _owned(d) as owned:
        owned.write(SUMMARY_NAME, render_summary(results, subdirs).encode("utf-8"))
    return d / SUMMARY_NAME


_LINK_RE = re.compile(r"\]\(([^()]+)/" + re.escape(MD_NAME) + r"\)")


def rerender(report_dir: str | Path) -> list[Path]:
    """Rebuild parity.md/parity.png from parity.json (or every per-dump subdir + summary.md)."""
    d = Path(report_dir)
    if (d / JSON_NAME).is_file():
        with _owned(d) as owned:
            owned.check_writable((MD_NAME, PNG_NAME))
            return _render_files(load_result(d / JSON_NAME), owned)
    subdirs: list[str] = []
    if (d / SUMMARY_NAME).is_file():
        from parity.store import fsio

        raw = fsio.read_file(d / SUMMARY_NAME, what="summary", fix="delete it and re-run 'parity compare --report'",
                             follow=False, limit=16 * 2**20)
        text = raw.decode("utf-8", "replace")
        for sub in _LINK_RE.findall(text):
            if sub in (".", "..") or "/" in sub or "\\" in sub or "\0" in sub or (d / sub).is_symlink():
                continue  # a hand-edited summary must not make us write outside report_dir
            if sub not in subdirs and (d / sub / JSON_NAME).is_file():
                subdirs.append(sub)
    if d.is_dir():
        for p in sorted(d.iterdir()):
            if p.is_dir() and not p.is_symlink() and (p / JSON_NAME).is_file() and p.name not in subdirs:
                subdirs.append(p.name)
    if not subdirs:
        raise ParityError(f"{d}: no {JSON_NAME} (nor per-dump subdirectories holding one) to re-render")
    written: list[Path] = []
    results = [load_result(d / sub / JSON_NAME) for sub in subdirs]
    check_report_dir(d, subdirs)
    for sub, r in zip(subdirs, results):
        with _owned(d / sub) as owned:
            written += _render_files(r, owned)
    written.append(write_summary(results, d, write_reports=False, subdirs=subdirs))
    return written


# ----------------------------------------------------------------------------------------------------------
# baseline

def load_baseline(path: str | Path) -> dict[tuple[str, str], float]:
    """``{(probe name, mode): max_abs}`` from a previous parity.json (file or directory holding one).

    Probes whose max_abs is null are left out; NaN/Inf come back as floats.
    """
    result = load_result(path)
    base: dict[tuple[str, str], float] = {}
    for p in result["probes"]:
        v = p.get("max_abs")
        if v is None:
            continue
        base[(p["name"], p["mode"])] = float(v)
    return base


def apply_baseline(result: dict, baseline: dict[tuple[str, str], float], factor: float = 2.0) -> dict:
    """Fail probes whose max_abs grew more than ``factor``× over the baseline, even inside tolerance.

    Per probe found in the baseline (by name and mode): ``baseline_max_abs`` is set; it regresses when
    baseline > 0 and max_abs > factor × baseline, or baseline == 0 and max_abs > BASELINE_ZERO_TOL (NaN on
    either side is not judged here). A regressed probe gets ``passed = False``, ``baseline_regressed = True``
    and a one-line note prepended to its message. ``result["passed"]`` becomes False if any probe fails
    (never True again if it was False); ``first_divergence``, if null, becomes the first failing probe.
    The dict is updated IN PLACE and also returned.
    """
    if not is_number(factor) or not (0 < float(factor) < math.inf):
        raise ParityError(f"baseline factor must be a finite number > 0, got {factor!r}")
    factor = float(factor)
    probes = result.get("probes")
    if not isinstance(probes, list):
        raise ParityError("report: result has no 'probes' list to compare with the baseline")
    result["baseline_factor"] = factor
    for p in probes:
        key = (p.get("name"), p.get("mode"))
        if key not in baseline:
            continue
        b = float(baseline[key])
        p["baseline_max_abs"] = b
        c = p.get("max_abs")
        c = None if c is None else float(_num(c))
        if c is None or math.isnan(c) or math.isnan(b):
            continue
        regressed = c > factor * b if b > 0 else c > BASELINE_ZERO_TOL
        if regressed:
            grow = f"{c / b:.3g}× the baseline" if b > 0 else "above the baseline"
            note = (f"probe {p.get('name')} ({p.get('mode')}): max abs {format_number(c)} is {grow} "
                    f"{format_number(b)} (limit {factor:g}×)")
            old = str(p.get("message") or "").strip()
            p["message"] = note + ("\n" + old if old else "")
            p["passed"] = False
            p["baseline_regressed"] = True
    result["passed"] = bool(result.get("passed", True)) and all(bool(p.get("passed")) for p in probes)
    if not result["passed"] and not result.get("first_divergence"):
        first = next((p for p in probes if not p.get("passed")), None)
        if first is not None:
            result["first_divergence"] = {"probe": first.get("name"), "mode": first.get("mode"),
                                          "reference_path": first.get("reference_path", ""),
                                          "subject_path": first.get("subject_path", "")}
    return result


def copy_result(result: dict) -> dict:
    """A deep copy (handy before apply_baseline when the original must stay untouched)."""
    return copy.deepcopy(result)
