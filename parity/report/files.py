"""Writing a report directory: files created exclusively, never through a symlink, and replaced only when this
tool wrote them (the directory's ``.parity-files.json`` record, ``parity.store.fsio.OwnedDir``)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable

from parity.errors import ParityError
from parity.report.markdown import render_markdown, render_summary
from parity.report.plot import png_bytes
from parity.report.schema import JSON_NAME, MD_NAME, PNG_NAME, SCHEMA, SUMMARY_NAME, decode, dumps_result, \
    load_result, validate


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
    validate(result, f"report for {result.get('case', '?') if isinstance(result, dict) else '?'}")
    text = dumps_result(result)
    with _owned(report_dir) as d:
        d.check_writable((JSON_NAME, MD_NAME, PNG_NAME))
        d.write(JSON_NAME, text.encode("utf-8"))
        return [Path(d.path) / JSON_NAME] + _render_files(decode(json.loads(text)), d)


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
        validate(r, f"report for {r.get('case', '?') if isinstance(r, dict) else '?'}")
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


def render_png(result: dict, path: str | Path) -> Path:
    """Per-block max |Δ| (isolated vs accumulated) on a log scale, with the block tolerance lines, written to
    the new or tool-written file ``path`` (see ``write_report`` for the ownership rule)."""
    path = Path(path)
    with _owned(path.parent) as d:
        d.write(path.name, png_bytes(result))
    return path


