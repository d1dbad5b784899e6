"""`make dump-reference` reproduces the committed reference dumps bit for bit."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest

from parity.dumping import dump_reference
from parity.families import family_of_case, fixture_dumps, get_family
from parity.store import open_dump

pytestmark = pytest.mark.torch
FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "reference")
DUMPS = sorted(os.path.basename(d) for d in glob.glob(os.path.join(FIXTURES, "*")))


def test_every_family_fixture_is_committed():
    assert sorted(DUMPS) == sorted(f"{c}-{p}" for c, p in fixture_dumps())
    from parity.families.pipeline.cases import DEFAULT_CASE as PIPELINE_CASE

    pipeline = [f for f in glob.glob(os.path.join(FIXTURES, f"{PIPELINE_CASE}-*", "**", "*"), recursive=True)
                if os.path.isfile(f)]
    for precision in ("fp32", "fp16"):
        size = sum(os.path.getsize(f) for f in pipeline if f"{PIPELINE_CASE}-{precision}" in f)
        assert 0 < size < 2**20, f"the {precision} pipeline fixture is {size} bytes; keep it under 1 MiB"
    total = sum(os.path.getsize(f) for f in glob.glob(os.path.join(FIXTURES, "**", "*"), recursive=True)
                if os.path.isfile(f))
    assert total < 16 * 2**20, f"committed fixtures grew to {total / 2**20:.1f} MiB; keep them a few MB per family"


@pytest.mark.parametrize("name", DUMPS)
def test_regeneration_reproduces_committed_dump(name, tmp_path):
    committed = open_dump(os.path.join(FIXTURES, name))
    case = get_family(committed.family).builtin_cases()[committed.case]
    assert family_of_case(committed.case) == committed.family
    out = tmp_path / name
    dump_reference(out=str(out), config=case.config, inputs=case.make_inputs(), seed=committed.manifest["seeds"]["weights"],
                   precision=committed.precision, case=case.name, inputs_seed=case.inputs_seed,
                   threads=committed.manifest["extra"]["threads"], family=committed.family)
    fresh = json.loads((out / "manifest.json").read_text())
    old = committed.manifest
    assert fresh["config"] == old["config"]
    assert fresh["weights"]["sha256"] == old["weights"]["sha256"], "weights differ from the committed ones"
    assert set(fresh["files"]) == set(old["files"])
    changed = sorted(k for k in old["files"] if fresh["files"][k]["sha256"] != old["files"][k]["sha256"])
    kernels = "torch_cpu_capability"
    if fresh["versions"].get(kernels) == old["versions"].get(kernels):
        assert not changed, f"{name}: regenerated files differ from the committed dump: {changed[:5]}"
        return
    # made with torch's other CPU kernel set (AVX2 vs AVX512): inputs and weights are still bit-identical, the
    # states agree to float32 rounding (low-precision states to a rare propagated 1-ULP flip)
    assert not [k for k in changed if not k.startswith("states")], changed
    regenerated = open_dump(str(out))
    for rel in changed:
        role, probe = ("state_fp32" if rel.startswith("states_fp32/") else "state"), rel.split("/")[1][:-4]
        ref, got = committed.state(probe, role), regenerated.state(probe, role)
        scale = max(1.0, float(np.abs(ref).max()))
        bound = (1e-5 if role == "state_fp32" or committed.precision == "fp32" else 0.03) * scale
        assert float(np.abs(got - ref).max()) <= bound, (f"{name}: {rel} differs by more than {bound:.3g} from the "
                                                         f"committed dump (made with {old['versions'].get(kernels)} "
                                                         f"kernels, this machine has {fresh['versions'].get(kernels)})")
