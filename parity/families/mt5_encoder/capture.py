"""The family's ``probe_map.json`` (version 2) read into capture specs for ``TorchCapture``/``MsCapture``.

A stop-gap until the harness's version-2 loader (issue 12) reads the map: the captures only read ``name``,
``capture`` (torch) and ``ms_capture`` (MindSpore) of each spec. mindone's ``MT5EncoderModel`` has
transformers' module paths and method names, so its capture rules are the reference's (``ms_capture`` is
``capture``); ``parity/families/mt5_encoder/tests`` checks that against both live models.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from parity.errors import ParityError
from parity.probemap import CaptureSpec
from .probes import PROBE_CLASSES

PROBE_MAP = os.path.join(os.path.dirname(__file__), "probe_map.json")


@dataclass(frozen=True)
class CaptureProbe:
    name: str
    probe_class: str
    path: str
    capture: CaptureSpec
    block: int | None = None

    @property
    def ms_capture(self) -> CaptureSpec:
        return self.capture


def capture_specs(num_layers: int, path: str = PROBE_MAP) -> list[CaptureProbe]:
    """The probes of a ``num_layers`` encoder in data-flow order, ``{i}`` expanded."""
    try:
        with open(path, "r", encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ParityError(f"{path}: cannot read the probe map ({exc.__class__.__name__}); reinstall the package") from None
    if not isinstance(data, dict) or data.get("version") != 2 or not isinstance(data.get("probes"), list):
        raise ParityError(f"{path}: not a version-2 probe map (needs 'version': 2 and a 'probes' list)")
    out: list[CaptureProbe] = []
    for k, entry in enumerate(data["probes"]):
        where = f"{path}: probes[{k}]"
        if not isinstance(entry, dict) or entry.get("class") not in PROBE_CLASSES:
            raise ParityError(f"{where}: needs 'name', 'class' (one of {PROBE_CLASSES}), 'path' and 'capture'")
        capture = CaptureSpec.parse(entry.get("capture"), where)
        name, cls, mpath = str(entry["name"]), entry["class"], str(entry.get("path", ""))
        if "{i}" in name:
            out += [CaptureProbe(name.format(i=i), cls, mpath.format(i=i), capture.formatted(i=i), i)
                    for i in range(num_layers)]
        else:
            out.append(CaptureProbe(name, cls, mpath, capture))
    return out
