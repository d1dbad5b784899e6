"""Reports of a comparison: ``parity.json`` (the schema: ``parity.report.schema``), ``parity.md`` (markdown),
``parity.png`` (plot), the report directory's files, and baselines.

The comparison engine hands ``write_report`` a plain dict built from the schema's dataclasses; the same dict,
written as ``parity.json``, is what ``rerender``, ``load_result`` and ``load_baseline`` read back.
"""

from parity.report.baseline import BASELINE_ZERO_TOL, apply_baseline, load_baseline  # noqa: F401
from parity.report.files import check_report_dir, render_png, rerender, subdir_names, write_report, write_summary  # noqa: F401
from parity.report.markdown import render_markdown, render_summary, summary_line  # noqa: F401
from parity.report.plot import png_bytes  # noqa: F401
from parity.report.schema import (JSON_NAME, MD_NAME, PNG_NAME, SCHEMA, SUMMARY_NAME, BlockRow,  # noqa: F401
                                  FirstDivergence, ProbeResult, copy_result, dumps_result, load_result)

__all__ = ["SCHEMA", "write_report", "write_summary", "rerender", "load_result", "load_baseline",
           "apply_baseline", "summary_line", "render_markdown", "render_png", "render_summary",
           "dumps_result", "subdir_names", "copy_result", "check_report_dir", "ProbeResult", "BlockRow",
           "FirstDivergence"]
