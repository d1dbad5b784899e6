"""``parity.md`` and ``summary.md``: the verdict line, the probe and block tables, what was not compared, and the
failure messages."""

from __future__ import annotations

from typing import Any

from parity.metrics import format_cosine, format_number
from parity.report.schema import MD_NAME, PNG_NAME, as_number


def _f(x: Any) -> str:
    return format_number(as_number(x)) if x is not None else "—"


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
        from parity.report.steps import render_steps_markdown
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
                   f"{format_cosine(as_number(p.get('cosine')))} | {_f(p.get('atol'))} | {_f(p.get('rtol'))} | {mark} |")
    if not result.get("probes"):
        out.append("| (no probes) | | | | | | | | | |")
    out.append("")

    blocks = result.get("blocks") or []
    if blocks:
        out += ["Per-block max abs error (growth = accumulated / isolated):", "",
                "| block | isolated max abs | accumulated max abs | growth |", "|---:|---:|---:|---:|"]
        for b in blocks:
            g = b.get("growth")
            gs = "—" if g is None else f"{format_number(as_number(g))}×"
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


def render_summary(results: list[dict], subdirs: list[str]) -> str:
    n_ok = sum(1 for r in results if r.get("passed"))
    verdict = "**PASS**" if results and n_ok == len(results) else "**FAIL**"
    lines = [f"{verdict} {n_ok}/{len(results)} dumps passed", ""]
    for r, sub in zip(results, subdirs):
        lines.append(f"- {summary_line(r)} — [report]({sub}/{MD_NAME})")
    return "\n".join(lines) + "\n"
