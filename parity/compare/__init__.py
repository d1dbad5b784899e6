"""The comparison engine, split by job: ``engine`` (a reference dump and a subject plug-in in, a result out),
``criteria`` (judging one probe), ``divergence`` (first divergence, growth table). Running the subject (resolving
it, capture, teacher forcing) is ``parity.runner``'s.
"""

from parity.compare.criteria import Evaluator  # noqa: F401
from parity.compare.divergence import block_table, first_divergence  # noqa: F401
from parity.compare.engine import CompareOptions, compare_dump, resolve_subject  # noqa: F401

__all__ = ["CompareOptions", "compare_dump", "resolve_subject", "first_divergence", "block_table", "Evaluator"]
