"""Bringing dumps made by other tools into this project's dump format.

``msprobe_dump`` reads an msprobe (MindStudio Probe) dump directory safely; ``msprobe`` maps it to the family's
probes and writes a parity dump. (Hand-made ``<probe>.npy`` folders are ``parity.dumping.ingest_legacy``.)
"""
