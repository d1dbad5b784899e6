"""The per-step part of a report (results with a ``steps`` summary: the pipeline family): a markdown table and
the plot, and the sentence naming the first step out of tolerance and its first failing probe."""

from __future__ import annotations

import math
from typing import Any

from parity.metrics import format_number

_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
from parity.probemap import MODES  # noqa: E402


def _v(x: Any) -> float | None:
    if isinstance(x, str):
        return _NONFINITE.get(x)
    return None if x is None else float(x)


def _f(x: Any) -> str:
    v = _v(x)
    return "—" if v is None else format_number(v)


def first_failing_lines(steps: dict) -> list[str]:
    labels = steps.get("mode_labels") or {}
    first = steps.get("first_failing") or {}
    rows = {r.get("step"): r for r in steps.get("rows") or []}
    out = []
    for mode in MODES:
        label = labels.get(mode, mode)
        f = first.get(mode)
        if f is None:
            if any(mode in r for r in rows.values()):
                out.append(f"{label}: every step within tolerance")
            continue
        row = rows.get(f.get("step"), {})
        out.append(f"{label}: first step out of tolerance is step {f.get('step')} (t = {_f(row.get('timestep'))}, "
                   f"σ = {_f(row.get('sigma'))}); its first failing probe is {f.get('probe')}")
    return out


def render_steps_markdown(steps: dict) -> list[str]:
    labels = steps.get("mode_labels") or {}
    modes = [m for m in MODES if any(m in r for r in steps.get("rows") or [])]
    out = ["## Per step", ""] + [f"- {line}" for line in first_failing_lines(steps)] + [""]
    out += ["latents_out in model-input units (|Δ| / √(σ_{k+1}²+1)); noise_pred is the guided prediction; *used* is "
            "the worst record's share of its tolerance (≤ 1 passes).", ""]
    head = "| step | t | σ |"
    rule = "|---:|---:|---:|"
    for m in modes:
        name = labels.get(m, m)
        head += f" {name}: latents_out | noise_pred | used (worst record) | first failing |"
        rule += "---:|---:|---:|---|"
    out += [head, rule]
    for r in steps.get("rows") or []:
        line = f"| {r.get('step')} | {_f(r.get('timestep'))} | {_f(r.get('sigma'))} |"
        for m in modes:
            c = r.get(m) or {}
            worst = f"{_f(c.get('worst_ratio'))} ({c.get('worst') or '—'})"
            fail = f"❌ `{c['first_failing']}`" if c.get("first_failing") else "✅"
            line += f" {_f(c.get('latents_out'))} | {_f(c.get('noise_pred'))} | {worst} | {fail} |"
        out.append(line)
    out.append("")
    return out


def draw_steps(fig, result: dict) -> None:
    """Two panels over the steps: the worst record's share of its tolerance, and the latents_out / guided
    prediction errors, per mode; failing steps marked."""
    steps = result["steps"]
    labels = steps.get("mode_labels") or {}
    rows = steps.get("rows") or []
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    style = {"isolated": ("tab:blue", "o"), "accumulated": ("tab:orange", "s")}
    for mode in MODES:
        pts = [(r["step"], r[mode]) for r in rows if mode in r]
        if not pts:
            continue
        color, marker = style[mode]
        label = labels.get(mode, mode)
        for ax, key, ls, what in ((ax1, "worst_ratio", "-", ""), (ax2, "latents_out", "-", " latents_out"),
                                  (ax2, "noise_pred", ":", " noise_pred")):
            xy = [(k, _v(c.get(key))) for k, c in pts]
            xy = [(k, min(max(v, 1e-12), 1e6)) for k, v in xy if v is not None and not math.isnan(v)]
            if xy:
                ax.plot([k for k, _ in xy], [v for _, v in xy], ls, color=color, marker=marker, markersize=4,
                        label=label + what)
        bad = [(k, _v(c.get("worst_ratio"))) for k, c in pts if c.get("first_failing")]
        bad = [(k, min(max(v or 1.0, 1e-12), 1e6)) for k, v in bad]
        if bad:
            ax1.plot([k for k, _ in bad], [v for _, v in bad], linestyle="none", marker="x", color="red",
                     markersize=9, label=f"{label}: out of tolerance")
    ax1.axhline(1.0, color="gray", linestyle="--", linewidth=1, label="tolerance")
    ax1.set_title("worst record / its tolerance", fontsize=9)
    ax2.set_title("max |Δ| (latents_out in model-input units)", fontsize=9)
    for ax in (ax1, ax2):
        ax.set_yscale("log")
        ax.set_xlabel("denoising step")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, loc="best")
