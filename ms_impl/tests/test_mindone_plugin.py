"""The ``mindone-opensora-pku`` plug-in (``ms_impl/mindone_pku.py``): mindone's OpenSoraT2V_v1_3 from a checkout.

The first part needs only MindSpore (config mapping, overlay, conditioning, the substitutes, refusals) and runs in
``make test``. The second needs a mindone checkout named by ``PARITY_MINDONE_PATH`` and the plug-in's extra
(``make test-checkouts PARITY_MINDONE_PATH=DIR`` sets both up); without it those tests are skipped with that
reason. With it: every isolated block of the four fp32 fixtures passes, the one real deviation (MindSpore's
CPU ``exp``) is reported first, at the embedded timestep, and goes away when ``exp`` is made exact; masks pass
compared by meaning; deliberately broken substitutes are caught at the probe where they act.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import types

import mindspore as ms
import numpy as np
import pytest
from mindspore import mint

from ms_impl import mindone_pku
from ms_impl.mindone_pku import (MODEL_FILE, PATCHES, PLUGIN_NAME, MindonePku, check_checkout, import_mindone,
                                 keep_from_bias, make_plugin, math_attention, mindone_kwargs)
from parity.compare import CompareOptions, compare_dump
from parity.errors import ParityError
from parity.families.opensora_v13.testing import tiny_config
from parity.plugins.provenance import checkout_commit
from parity.runner import ModelRun

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "fixtures", "reference")
CASES = ("tiny-dense", "tiny-sparse", "tiny-32", "padded-batch")
MINDONE = os.environ.get("PARITY_MINDONE_PATH") or None
needs_checkout = pytest.mark.skipif(
    MINDONE is None, reason="PARITY_MINDONE_PATH does not name a mindone checkout (run `make test-checkouts "
                            "PARITY_MINDONE_PATH=DIR` with a checkout of wtomin/mindone v0.5.0)")
# what MindSpore's CPU exp moves (it is up to 4.5e-6 relative off): the sinusoid and everything computed from it
EXP_PROBES = {"embedded_timestep_operate_on_patched_inputs", "timestep_operate_on_patched_inputs"}
FIRST_DIVERGENCE = ("embedded_timestep_operate_on_patched_inputs", "isolated")


# ---- without a checkout -----------------------------------------------------------------------------------------
def _config(**over) -> dict:
    from parity.families import get_family
    return get_family("opensora_v13").parse_config(tiny_config(**over)).to_dict()


def test_config_mapping_is_strict_and_complete():
    cfg = _config(sparse1d=True, sparse_n=4)
    kwargs = mindone_kwargs({**cfg, "_class_name": "OpenSoraT2V_v1_3"}, ms.bfloat16)
    assert "_class_name" not in kwargs and "sample_size" not in kwargs
    assert kwargs["use_recompute"] is False and kwargs["num_no_recompute"] == 0 and kwargs["FA_dtype"] == ms.bfloat16
    assert {k: kwargs[k] for k in ("num_layers", "sparse1d", "sparse_n")} == {"num_layers": 4, "sparse1d": True,
                                                                             "sparse_n": 4}
    sized = mindone_kwargs({**cfg, "sample_size": [44, 80]}, ms.bfloat16)
    assert (sized["sample_size_h"], sized["sample_size_w"]) == (44, 80)
    released = mindone_kwargs({**cfg, "sample_size_h": [44, 80], "sample_size_w": [44, 80]}, ms.bfloat16)
    assert released["sample_size_h"] == [44, 80]
    with pytest.raises(ParityError, match="no counterpart in mindone"):
        mindone_kwargs({**cfg, "use_rope": True}, ms.bfloat16)


@pytest.mark.parametrize("sparse1d, sparse_n", [(True, 4), (False, 1), (True, 1)])
def test_overlay_accounts_for_every_probe(sparse1d, sparse_n):
    cfg = _config(sparse1d=sparse1d, sparse_n=sparse_n)
    run = ModelRun(make_plugin(), "opensora_v13", cfg)
    views = {p.name: p.subject for p in run.probes}
    for name, view in views.items():
        assert (view.capture is None) == bool(view.not_applicable), f"{name}: neither captured nor not applicable"
        if "mask" in name and name not in ("attention_mask_input", "encoder_attention_mask_input"):
            assert view.not_applicable or (view.compare, view.convention) == ("meaning", "keep"), name
    built = {1, sparse_n} if sparse1d else set()
    for n in (1, 4):
        assert (views[f"attention_mask_sparse_{n}_True"].capture is None) == (n not in built)
    assert views["hidden_states_output"].capture.select == ()      # mindone returns the tensor itself
    assert views["hidden_states_2_block"].adapter == "identity"      # (S, B, D), like the reference
    if not sparse1d:
        assert views["attention_mask_converted"].capture.module == "transformer_blocks.0"


def test_reference_bias_becomes_one_keep_mask_per_sub_batch():
    bias = np.zeros((8, 2, 1, 5), np.float32)
    bias[:, :, :, 3] = -10000.0
    bias[:, :, :, 4] = -9980.0
    keep = keep_from_bias(bias, "mask")
    assert keep.shape == (8, 1, 1, 5)
    np.testing.assert_array_equal(keep[0, 0, 0], [1, 1, 1, 0, 0])
    bias[1, 1, 0, 0] = -10000.0
    with pytest.raises(ParityError, match="differs between heads"):
        keep_from_bias(bias, "mask")


def _numpy_attention(q, k, v, keep, heads, scale, fill):
    b, sq, inner = q.shape
    d = inner // heads

    def split(x):
        return x.reshape(b, -1, heads, d).transpose(0, 2, 1, 3).astype(np.float64)

    scores = split(q) @ split(k).transpose(0, 1, 3, 2) * scale + np.where(keep, 0.0, fill)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return (p @ split(v)).transpose(0, 2, 1, 3).reshape(b, sq, inner)


@pytest.mark.parametrize("shape", ["sparse", "dense", "bool"])
def test_math_attention_keeps_mindones_convention(shape):
    """Packed heads, 1 = keep, the caller's scale: the substitute equals float64 attention with an additive bias."""
    rng = np.random.default_rng(0)
    b, heads, d, sq, sk = 3, 2, 6, 5, 7
    q, k, v = (rng.standard_normal((b, s, heads * d)).astype(np.float32) for s in (sq, sk, sk))
    if shape == "sparse":   # (B', 1, Sq, Sk), repeated per query as npu_config.get_attention_mask makes it
        keep = np.broadcast_to((rng.random((b, 1, 1, sk)) > 0.3), (b, 1, sq, sk)).astype(np.float16)
    else:                   # (B, N, 1, L), repeated per head by Attention.prepare_attention_mask
        keep = np.repeat((rng.random((b, 1, 1, sk)) > 0.3), heads, axis=1).astype(np.float32)
    keep[..., 0] = 1
    mask = ms.Tensor(keep.astype(bool)) if shape == "bool" else ms.Tensor(np.ascontiguousarray(keep))
    got = math_attention(ms.Tensor(q), ms.Tensor(k), ms.Tensor(v), mask, heads, 1 / np.sqrt(d), "BNSD",
                         fill=-10000.0).asnumpy()
    want = _numpy_attention(q, k, v, keep.astype(bool), heads, 1 / np.sqrt(d), -10000.0)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


def test_cpu_substitutes_compute_what_mint_would_and_are_scoped():
    x = np.linspace(-6, 6, 101, dtype=np.float32).reshape(1, 101)
    np.testing.assert_array_equal(mindone_pku._cpu_arange(0, 7, dtype=ms.float32).asnumpy(), np.arange(7.0))
    np.testing.assert_array_equal(mindone_pku._cpu_pad(ms.Tensor(x), (0, 2), value=0.0).asnumpy(),
                                  np.pad(x, ((0, 0), (0, 2))))
    g = x.astype(np.float64)
    tanh_gelu = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g ** 3)))
    np.testing.assert_allclose(mindone_pku._cpu_gelu(ms.Tensor(x), approximate="tanh").asnumpy(), tanh_gelu,
                               rtol=0, atol=1e-6)
    plugin = make_plugin()
    plugin._device = "CPU"
    before = (mint.arange, mint.nn.functional.gelu, mint.nn.functional.pad)
    with plugin._ops_patched():
        assert (mint.arange, mint.nn.functional.gelu, mint.nn.functional.pad) == (
            mindone_pku._cpu_arange, mindone_pku._cpu_gelu, mindone_pku._cpu_pad)
    assert (mint.arange, mint.nn.functional.gelu, mint.nn.functional.pad) == before
    assert [p["name"] for p in plugin.describe()["patches"]] == ["arange", "gelu", "pad"]


def test_subject_path_must_be_a_mindone_checkout(tmp_path):
    with pytest.raises(ParityError, match="needs --subject-path"):
        make_plugin().check_device("CPU")
    with pytest.raises(ParityError, match="not a mindone checkout"):
        make_plugin(str(tmp_path))
    with pytest.raises(ParityError, match="not a mindone checkout"):
        compare_dump(os.path.join(FIXTURES, "tiny-dense-fp32"),
                     CompareOptions(subject=PLUGIN_NAME, subject_path=str(tmp_path), progress=False))


def _fake_checkout(root) -> str:
    for rel in (MODEL_FILE, os.path.join("mindone", "__init__.py")):
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "w").close()
    return str(root)


def test_a_different_opensora_already_imported_is_refused(tmp_path):
    root = check_checkout(_fake_checkout(tmp_path))
    other = types.ModuleType("opensora")
    other.__path__ = [str(tmp_path / "elsewhere" / "opensora")]
    with _fresh_modules():
        sys.modules["opensora"] = other
        with pytest.raises(ParityError, match="a different 'opensora' package is already imported"):
            import_mindone(root)


@contextlib.contextmanager
def _fresh_modules():
    """No mindone/opensora modules for the duration; whatever was imported before is put back afterwards."""
    ours = [n for n in sys.modules if n.split(".")[0] in ("mindone", "opensora")]
    saved = {n: sys.modules.pop(n) for n in ours}
    path = list(sys.path)
    try:
        yield
    finally:
        for n in [n for n in sys.modules if n.split(".")[0] in ("mindone", "opensora")]:
            del sys.modules[n]
        sys.modules.update(saved)
        sys.path[:] = path


def test_a_model_that_cannot_be_imported_names_the_extra(tmp_path):
    root = _fake_checkout(tmp_path)
    with open(os.path.join(root, MODEL_FILE), "w", encoding="utf-8") as fh:
        fh.write("import a_dependency_that_is_not_installed\n")
    with _fresh_modules():
        with pytest.raises(ParityError, match=r"pip install 'opensora-parity\[mindone\]'"):
            import_mindone(check_checkout(root))
        assert "opensora" not in sys.modules   # cleaned up: a later attempt starts afresh


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_the_checkouts_commit_is_recorded(tmp_path):
    root = _fake_checkout(tmp_path)
    git = ["git", "-C", root, "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-qm", "checkout"], check=True)
    head = subprocess.run(git + ["rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    described = make_plugin(root).describe()
    assert (described["source"], described["git_commit"]) == (root, head)


# ---- with a checkout --------------------------------------------------------------------------------------------
_RESULTS: dict = {}


def _compare(case: str, plugin=None, patch=None) -> dict:
    return compare_dump(os.path.join(FIXTURES, f"{case}-fp32"),
                        CompareOptions(subject=plugin or PLUGIN_NAME, subject_path=MINDONE, subject_patch=patch,
                                       progress=False))


def _result(case: str) -> dict:
    if case not in _RESULTS:
        _RESULTS[case] = _compare(case)
    return _RESULTS[case]


def _exact_exp(x):
    return ms.Tensor(np.exp(x.asnumpy().astype(np.float64)).astype(np.float32)).astype(x.dtype)


@contextlib.contextmanager
def _exact_exp_patch(model):
    """MindSpore's CPU exp replaced by a correctly rounded one (the test's, not the plug-in's)."""
    before = mint.exp
    mint.exp = _exact_exp
    try:
        yield
    finally:
        mint.exp = before


def _failing(result) -> list[tuple[str, str]]:
    return [(p["name"], p["mode"]) for p in result["probes"] if not p["passed"]]


@needs_checkout
@pytest.mark.parametrize("case", CASES)
def test_every_isolated_block_and_the_output_head_pass(case):
    result = _result(case)
    steps = [p for p in result["probes"] if p["mode"] == "isolated" and p["probe_class"] in ("block", "output")]
    assert steps and all(p["passed"] for p in steps), [p["message"] for p in steps if not p["passed"]]
    assert max(p["max_abs"] for p in steps if p["probe_class"] == "block") <= 1e-6


@needs_checkout
@pytest.mark.parametrize("case", CASES)
def test_the_first_divergence_is_the_embedded_timestep(case):
    result = _result(case)
    fd = result["first_divergence"]
    assert (fd["probe"], fd["mode"]) == FIRST_DIVERGENCE
    assert {name for name, _ in _failing(result)} <= EXP_PROBES, _failing(result)
    # nothing silently missing: every probe of the dump is compared in both modes or declared not applicable
    with open(os.path.join(FIXTURES, f"{case}-fp32", "manifest.json"), encoding="utf-8") as fh:
        dumped = set(json.load(fh)["probes"])
    compared = {(p["name"], p["mode"]) for p in result["probes"]}
    na = {e["name"] for e in result["not_applicable"]}
    assert {(n, m) for n in dumped - na for m in ("isolated", "accumulated")} <= compared
    assert not result["not_evaluated"]


@needs_checkout
def test_the_divergence_is_mindspores_cpu_exp():
    """With exp made exact (and nothing else changed) every probe passes, the accumulated output included."""
    result = _compare("padded-batch", patch=_exact_exp_patch)
    assert result["passed"], _failing(result)


@needs_checkout
@pytest.mark.parametrize("case", ["tiny-sparse", "tiny-dense"])
def test_masks_are_compared_by_meaning(case):
    result = _result(case)
    masks = [p for p in result["probes"] if p["probe_class"] == "mask"]
    assert masks and all(p["passed"] and p["criterion"] == "meaning" and "'keep'" in p["compared_by"]
                         for p in masks)
    na = {e["name"]: e["why"] for e in result["not_applicable"]}
    if case == "tiny-dense":
        assert len(na) == 8 and all("sparse1d=True" in why for why in na.values())
    else:
        assert not na


@needs_checkout
def test_the_report_names_the_checkout_and_every_patch():
    result = _result("tiny-sparse")
    subject = result["subject"]
    assert subject["source"] == os.path.realpath(MINDONE)
    assert subject["git_commit"] == checkout_commit(MINDONE)   # None when the checkout is not a git work tree
    assert [p["name"] for p in subject["patches"]] == ["bare-packages", "pandas-stub", "flash-check", "arange", "gelu",
                                                       "pad", "math-attention"]
    assert {p["name"] for p in subject["patches"]} <= set(PATCHES)
    assert any("math-attention" in n for n in result["notes"])


def _inverted_attention(*args, **kwargs):
    query, key, value, mask = args[:4]
    return math_attention(query, key, value, mask == 0, *args[4:], **kwargs)


class _InvertedMask(MindonePku):
    """The attention substitute with its mask sense inverted (mindone's own non-flash fallback's mistake)."""

    attention_fn = staticmethod(_inverted_attention)


@needs_checkout
def test_an_inverted_mask_in_the_substitute_is_caught_at_block_0():
    result = _compare("padded-batch", plugin=_InvertedMask(MINDONE), patch=_exact_exp_patch)
    assert (result["first_divergence"]["probe"], result["first_divergence"]["mode"]) == ("hidden_states_0_block",
                                                                                         "isolated")
    assert all(p["passed"] for p in result["probes"] if p["probe_class"] in ("mask", "embedding"))


@needs_checkout
def test_skiparse_padding_of_one_is_caught_at_the_sparse_mask(monkeypatch):
    """A pad substitute that pads with 1 (keep) instead of 0: the n=4 Skiparse mask, compared by meaning, fails
    first (padded-batch has 45 tokens, padded to 48); n=1 masks need no padding and pass."""
    real = mindone_pku._cpu_pad
    monkeypatch.setattr(mindone_pku, "_cpu_pad", lambda x, pad, mode="constant", value=None: real(x, pad, mode, 1))
    result = _compare("padded-batch", patch=_exact_exp_patch)
    fd = result["first_divergence"]
    assert (fd["probe"], fd["mode"]) == ("attention_mask_sparse_4_False", "isolated")
    assert "compared by meaning" in next(p["message"] for p in result["probes"]
                                         if p["name"] == fd["probe"] and p["mode"] == "isolated")


@needs_checkout
def test_weights_are_loaded_strictly():
    from parity.plugins.contract import BuildRequest
    from parity.store import open_dump

    dump = open_dump(os.path.join(FIXTURES, "tiny-dense-fp32"))
    weights = dict(dump.load_weights())
    plugin = make_plugin(MINDONE)
    build = plugin.build(BuildRequest("opensora_v13", dump.config, weights, "fp32"))
    got = {k: v.asnumpy() for k, v in build.parameters_dict().items()}
    assert set(got) == set(weights) and all(np.array_equal(got[k], weights[k]) for k in weights)
    short = {k: v for k, v in weights.items() if k != "proj_out.bias"}
    with pytest.raises(ParityError, match=r"1 parameters without a weight \(e.g. proj_out.bias\)"):
        plugin.build(BuildRequest("opensora_v13", dump.config, short, "fp32"))
    with pytest.raises(ParityError, match="1 weights without a parameter"):
        plugin.build(BuildRequest("opensora_v13", dump.config, {**weights, "extra.weight": weights["proj_out.bias"]},
                                  "fp32"))
    with pytest.raises(ParityError, match="bf16 dump needs --device Ascend"):
        plugin.build(BuildRequest("opensora_v13", dump.config, weights, "bf16"))
