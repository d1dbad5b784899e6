"""A small third-party-style MindSpore port of Open-Sora-Plan v1.3, written from scratch for the tests: it plugs into
the parity harness through ``plugin.py`` and ``overlay.json`` alone (see docs/plugins.md)."""
