"""The comparison engine, split by job: ``engine`` (a reference dump and a subject plug-in in, a result out),
``criteria`` (judging one probe), ``isolated`` (teacher forcing), ``divergence`` (first divergence, growth table).
"""

from parity.compare.criteria import Evaluator  # noqa: F401
from parity.compare.divergence import block_table, first_divergence  # noqa: F401
from parity.compare.engine import CompareOptions, compare_dump, resolve_subject, select_probes  # noqa: F401
from parity.compare.isolated import run_isolated  # noqa: F401

__all__ = ["CompareOptions", "compare_dump", "resolve_subject", "select_probes", "run_isolated",
           "first_divergence", "block_table", "Evaluator"]
