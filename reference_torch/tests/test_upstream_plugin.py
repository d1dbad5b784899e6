"""The ``upstream`` reference plug-in: upstream Open-Sora-Plan's own ``OpenSoraT2V_v1_3`` from a checkout.

Tests that need the checkout run when PARITY_UPSTREAM_PATH names one — ``make test-upstream
PARITY_UPSTREAM_PATH=DIR`` builds ``.venv-upstream`` (upstream's diffusers pin) and runs them — and are reported as
skipped with that reason otherwise. Without it, only the plug-in's refusals are checked.
"""

from __future__ import annotations

import filecmp
import json
import os
import sys

import numpy as np
import pytest

from parity.cli import main as parity_main
from parity.errors import ParityError
from parity.families import family_of_case, fixture_dumps, get_family
from parity.plugins import load_plugin

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "fixtures", "reference")
# upstream's own class is an OpenSoraT2V v1.3: every committed fixture of that family
COMMITTED = sorted(f"{c}-{p}" for c, p in fixture_dumps() if family_of_case(c) == "opensora_v13")
UPSTREAM = os.environ.get("PARITY_UPSTREAM_PATH")
needs_checkout = pytest.mark.skipif(
    not UPSTREAM, reason="PARITY_UPSTREAM_PATH is not set: these tests need an Open-Sora-Plan checkout (v1.3, e.g. "
                         "9fa322fb) and upstream's diffusers; run make test-upstream PARITY_UPSTREAM_PATH=DIR")
FAMILY = get_family("opensora_v13")


def _case(name):
    return FAMILY.builtin_cases()[name]


def _dump(out, *args, reference="upstream") -> None:
    path = ["--reference-path", UPSTREAM] if reference == "upstream" else []
    code = parity_main(["dump", *args, "--reference", reference, *path, "--out", str(out)])
    assert code == 0, f"parity dump --reference {reference} {' '.join(args)} exited {code}"


def _files(folder) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def assert_same_bytes(dump, expected) -> None:
    """Every input, state and weight file byte for byte (the manifests differ only in provenance)."""
    got, want = _files(dump), _files(expected)
    assert got == want, f"files differ: only in {dump}: {sorted(set(got) - set(want))}; only in {expected}: " \
                        f"{sorted(set(want) - set(got))}"
    different = [f for f in got if f != "manifest.json"
                 and not filecmp.cmp(os.path.join(dump, f), os.path.join(expected, f), shallow=False)]
    assert not different, f"{len(different)} file(s) differ from {expected}: {different[:8]}"
    with open(os.path.join(dump, "manifest.json"), encoding="utf-8") as a, \
            open(os.path.join(expected, "manifest.json"), encoding="utf-8") as b:
        assert json.load(a)["files"] == json.load(b)["files"]


# ---- without a checkout ------------------------------------------------------------------------------------------
def test_upstream_is_registered_and_needs_a_checkout():
    plugin = load_plugin("upstream", "reference")
    assert plugin.name == "upstream" and plugin.framework == "torch"
    with pytest.raises(ParityError, match="needs --reference-path DIR"):
        plugin.random_weights("opensora_v13", _case("tiny-sparse").config, 0)
    assert [s["active"] for s in plugin.describe()["shims"]] == ["while importing"] * 3 + ["around each forward"]


def test_a_folder_that_is_not_a_checkout_is_refused_in_one_line(tmp_path, capsys):
    code = parity_main(["dump", "--case", "tiny-sparse", "--reference", "upstream", "--reference-path", str(tmp_path),
                        "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not an Open-Sora-Plan v1.3 checkout" in err[0]
    assert not (tmp_path / "out").exists()


# ---- against the checkout ---------------------------------------------------------------------------------------
@needs_checkout
@pytest.mark.parametrize("fixture", COMMITTED)
def test_dump_is_byte_identical_to_the_committed_fixture(fixture, tmp_path):
    case, precision = fixture.rsplit("-", 1)
    _dump(tmp_path / fixture, "--case", case, "--precision", precision)
    assert_same_bytes(tmp_path / fixture, os.path.join(FIXTURES, fixture))
    with open(tmp_path / fixture / "manifest.json", encoding="utf-8") as fh:
        reference = json.load(fh)["extra"]["reference"]
    assert reference["plugin"] == "upstream" and reference["source"] == os.path.realpath(UPSTREAM)
    assert reference["git_commit"] and reference["versions"]["diffusers"] == "0.30.2"
    assert len(reference["shims"]) == 4


@needs_checkout
@pytest.mark.parametrize("case", sorted(FAMILY.builtin_cases()))
def test_random_weights_are_upstreams_init_bit_identical_to_torch_reference(case):
    config = _case(case).config
    upstream = load_plugin("upstream", "reference", UPSTREAM).random_weights("opensora_v13", config, 3)
    ours = load_plugin("torch-reference", "reference").random_weights("opensora_v13", config, 3)
    assert list(upstream) == list(ours)   # same names in the same (state-dict) order
    for name in ours:
        np.testing.assert_array_equal(upstream[name], ours[name], err_msg=name)


@needs_checkout
def test_shims_are_gone_after_import_and_forward():
    import torch

    sdp_kernel = torch.backends.cuda.sdp_kernel
    plugin = load_plugin("upstream", "reference", UPSTREAM)
    case = _case("padded-batch")
    from parity.plugins.contract import BuildRequest

    weights = plugin.random_weights("opensora_v13", case.config, 0)
    model = plugin.build(BuildRequest("opensora_v13", case.config, weights, "fp32"))
    (out,) = plugin.forward(model, "opensora_v13", FAMILY.normalize_inputs(case.make_inputs(),
                                                                           FAMILY.parse_config(case.config)))
    assert tuple(out.shape) == case.make_inputs()["hidden_states"].shape
    assert type(model).__module__ == "opensora.models.diffusion.opensora_v1_3.modeling_opensora"
    assert os.path.realpath(sys.modules[type(model).__module__].__file__).startswith(os.path.realpath(UPSTREAM))
    assert torch.backends.cuda.sdp_kernel is sdp_kernel
    assert not any("parity's runtime shim" in (getattr(sys.modules.get(n), "__doc__", None) or "")
                   for n in ("opensora.models", "opensora.models.diffusion", "opensora.utils.utils"))


# A configuration and inputs that are in no fixture: 3 layers (2 dense, 1 Skiparse), 3 heads x 24, an odd number
# of frames, a non-square latent whose token count (5 x 3 x 5 = 75) needs Skiparse padding, a batch of 2 with a
# padded video region and ragged text.
HELD_OUT_CONFIG = dict(num_attention_heads=3, attention_head_dim=24, num_layers=3, in_channels=4, out_channels=4,
                       patch_size=2, patch_size_t=1, caption_channels=20, cross_attention_dim=72,
                       activation_fn="gelu-approximate", attention_bias=True, norm_elementwise_affine=False,
                       norm_eps=1e-6, sparse1d=True, sparse_n=4, _class_name="OpenSoraT2V_v1_3")


def _held_out_inputs() -> dict:
    rng = np.random.default_rng(20240613)
    video_mask = np.ones((2, 5, 6, 10), np.float32)
    video_mask[1, 3:, :, 6:] = 0
    text_mask = np.ones((2, 1, 7), np.float32)
    text_mask[0, 0, 5:] = 0
    text_mask[1, 0, 2:] = 0
    return {"hidden_states": rng.standard_normal((2, 4, 5, 6, 10), dtype=np.float32),
            "timestep": np.array([937.0, 18.0], np.float32),
            "encoder_hidden_states": rng.standard_normal((2, 1, 7, 20), dtype=np.float32),
            "attention_mask": video_mask, "encoder_attention_mask": text_mask}


@needs_checkout
@pytest.mark.parametrize("precision, weights", [("bf16", "seed"), ("fp32", "file")])
def test_held_out_config_gives_the_same_bytes_through_both_references(tmp_path, precision, weights):
    from parity.safetensors_io import save_safetensors

    config, inputs = tmp_path / "config.json", tmp_path / "inputs.npz"
    config.write_text(json.dumps(HELD_OUT_CONFIG), encoding="utf-8")
    np.savez(inputs, **_held_out_inputs())
    if weights == "seed":
        source = ["--seed", "11"]
    else:   # weights from numpy, not from either model's init
        rng = np.random.default_rng(5)
        shapes = FAMILY.expected_state_dict_shapes(FAMILY.parse_config(HELD_OUT_CONFIG))
        save_safetensors(tmp_path / "w.safetensors",
                         {k: (0.05 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()})
        source = ["--weights", str(tmp_path / "w.safetensors")]
    args = ["--config", str(config), "--inputs", str(inputs), "--precision", precision, *source]
    _dump(tmp_path / "upstream", *args)
    _dump(tmp_path / "torch-reference", *args, reference="torch-reference")
    assert_same_bytes(tmp_path / "upstream", tmp_path / "torch-reference")
