"""Model families known to the harness.

A family is plain data plus numpy: its config schema, probe names, shape arithmetic and the probe map that
tells the harness where each probe lives in the torch reference and the MindSpore subject. The harness finds
the framework-side code of a family only through the import strings in the family's probe map, so
``parity`` itself never imports ``reference_torch`` or ``ms_impl``.
"""

FAMILIES = ("opensora_v13",)
