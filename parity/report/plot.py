"""``parity.png``: per-block max |Δ|, isolated vs accumulated, on a log scale with the tolerance lines (per-step
panels for a pipeline)."""

from __future__ import annotations

import math

from parity.dtypes import is_int
from parity.report.schema import as_number


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
        from parity.report.steps import draw_steps
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
            v = None if v is None else float(as_number(v))
            if v is not None and not math.isnan(v):
                pts.append((x, v))
        if pts:
            series[mode] = pts
    positives = [v for pts in series.values() for _, v in pts if 0 < v < math.inf]
    tols = {}
    for p in result.get("probes", []):
        if p.get("probe_class") == "block" and p.get("mode") in ("isolated", "accumulated"):
            a = p.get("atol")
            a = None if a is None else float(as_number(a))
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
