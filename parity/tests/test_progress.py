"""The compare progress bar (tqdm): on the given stream, only after its delay, nothing when disabled."""

from __future__ import annotations

import io

from parity.progress import Progress


def test_bar_counts_probes_and_names_the_current_one():
    out = io.StringIO()
    p = Progress(3, "compare tiny", delay=0.0, stream=out)
    for name in ("a", "b", "hidden_states_0_block"):
        p.update(1, f"accumulated {name}")
    p.close()
    text = out.getvalue()
    assert "compare tiny" in text and "3/3" in text and "hidden_states_0_block" in text


def test_quiet_before_the_delay_and_when_disabled():
    for kwargs in ({"delay": 60.0}, {"enabled": False}):
        out = io.StringIO()
        p = Progress(5, "compare x", stream=out, **kwargs)
        p.update(5, "accumulated y")
        p.close()
        assert out.getvalue() == ""
