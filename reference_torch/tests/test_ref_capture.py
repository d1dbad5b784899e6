"""Probe capture: the generic ``parity.capture_torch.TorchCapture`` on toy modules, and the family's probe map on
the reference model (every probe, documented shapes, capture on == off bit for bit)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from parity.capture_torch import TorchCapture, module_paths
from parity.errors import ParityError
from parity.families.opensora_v13.probes import probe_names
from parity.probemap import CaptureItem, CaptureSpec, family_capture_items
from reference_torch import harness as H
from reference_torch.tests.helpers import make_inputs, tiny_config

pytestmark = pytest.mark.torch


# ---------------------------------------------------------------------------------------------------------
# generic capture on a toy model
# ---------------------------------------------------------------------------------------------------------


class _Out:
    def __init__(self, sample):
        self.sample = sample


class _Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)

    @staticmethod
    def table(x, n, scale=1.0):
        return {False: (x * n, x + n), True: (x * scale, x)}

    def forward(self, x, bias=None, *, tag="a"):
        return self.lin(x) + (0 if bias is None else bias)


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = _Inner()

    def helper(self, x, k):
        return x * k, x - k

    def forward(self, x, return_obj=True):
        tables = [_Inner.table(x, n) for n in (1, 4)]
        a, _ = self.helper(x, 2)
        y = self.inner(a, bias=tables[1][False][0])
        y = self.inner(y, tag="b")  # called twice: probes record the first call
        return _Out(y) if return_obj else (y,)


def _spec(name, **cap):
    capture = CaptureSpec(module=cap.pop("module"), take=cap.pop("take"), method=cap.pop("method", None),
                          static=cap.pop("static", False), arg=cap.pop("arg", None), where=cap.pop("where", {}),
                          select=tuple(cap.pop("select", ())))
    return CaptureItem(name, capture)


def _toy_specs():
    return [
        _spec("x_in", module="", take="input", arg="x"),
        _spec("out", module="", take="output", select=[0]),
        _spec("inner_bias", module="inner", take="input", arg="bias"),
        _spec("inner_out", module="inner", take="output"),
        _spec("tag", module="inner", take="input", arg="tag", where={"tag": "b"}),
        _spec("helper_1", module="", method="helper", take="output", select=[1]),
        _spec("helper_k", module="", method="helper", take="input", arg="k"),
        _spec("table4", module="inner", method="table", static=True, take="output", where={"n": 4},
              select=[False, 0]),
        _spec("table1_x", module="inner", method="table", static=True, take="input", arg="x", where={"n": 1}),
        _spec("table_scale", module="inner", method="table", static=True, take="input", arg="scale",
              where={"n": 4}),
    ]


def test_torch_capture_hooks_methods_statics_where_and_select():
    torch.manual_seed(0)
    model = _Toy()
    x = torch.randn(2, 3)
    with torch.no_grad():
        ref = model(x).sample
    got = {}
    with TorchCapture(model, _toy_specs(), lambda n, a, d: got.__setitem__(n, (a, d))), torch.no_grad():
        out = model(x).sample
    assert torch.equal(out, ref)
    assert set(got) == {s.name for s in _toy_specs()}
    np.testing.assert_array_equal(got["x_in"][0], x.numpy())
    np.testing.assert_array_equal(got["out"][0], ref.numpy())
    np.testing.assert_array_equal(got["inner_bias"][0], (x * 4).numpy())  # first call's bias
    np.testing.assert_array_equal(got["table4"][0], (x * 4).numpy())
    np.testing.assert_array_equal(got["table1_x"][0], x.numpy())
    np.testing.assert_array_equal(got["helper_1"][0], (x - 2).numpy())
    assert got["helper_k"][0] == 2 and got["table_scale"][0] == 1.0  # plain Python values, defaults applied
    assert got["tag"][0] == np.array("b")  # the `where` selects the second call
    with torch.no_grad():
        first_inner = model.inner(x * 2, bias=x * 4)
    np.testing.assert_array_equal(got["inner_out"][0], first_inner.numpy())
    assert got["out"][1] == "float32"
    # everything is removed again
    assert "helper" not in model.__dict__ and isinstance(_Inner.__dict__["table"], staticmethod)
    assert _Inner.__dict__["table"].__func__.__name__ == "table" and not hasattr(_Inner.table, "__wrapped__")
    assert not model._forward_hooks and not model._forward_pre_hooks
    assert not model.inner._forward_hooks and not model.inner._forward_pre_hooks


def test_torch_capture_restores_everything_after_an_exception():
    model = _Toy()
    original = _Inner.__dict__["table"]

    def boom(name, arr, dtype):
        raise RuntimeError("consumer failed")

    with pytest.raises(RuntimeError, match="consumer failed"):
        with TorchCapture(model, _toy_specs(), boom):
            model(torch.randn(2, 3))
    assert _Inner.__dict__["table"] is original
    assert "helper" not in model.__dict__
    assert not model._forward_hooks and not model._forward_pre_hooks and not model.inner._forward_pre_hooks


def test_torch_capture_records_once_per_root_forward():
    model = _Toy()
    seen = []
    with TorchCapture(model, [_spec("inner_out", module="inner", take="output")], lambda n, a, d: seen.append(n)):
        model(torch.randn(2, 3))
        model(torch.randn(2, 3))
    assert seen == ["inner_out", "inner_out"]


def test_torch_capture_bf16_is_exact_float32_and_tuple_select():
    model = _Toy().to(torch.bfloat16)
    got = {}
    with TorchCapture(model, [_spec("out", module="", take="output", select=[0])],
                      lambda n, a, d: got.__setitem__(n, (a, d))):
        (out,) = model(torch.randn(2, 3).to(torch.bfloat16), return_obj=False)
    arr, dtype = got["out"]
    assert dtype == "bfloat16" and arr.dtype == np.float32
    np.testing.assert_array_equal(arr, out.detach().float().numpy())


def test_torch_capture_fails_loudly_on_bad_specs():
    model = _Toy()
    for spec, match in ((_spec("p", module="nope", take="output"), "module path"),
                        (_spec("p", module="", method="missing", take="output"), "no method"),
                        (_spec("p", module="inner", method="forward", static=True, take="output"), "not a staticmethod"),
                        (_spec("p", module="inner", method="absent", static=True, take="output"), "no static method")):
        with pytest.raises(ParityError, match=match):
            with TorchCapture(model, [spec], lambda *a: None):
                pass
    with pytest.raises(ParityError, match="not a parameter"):
        with TorchCapture(model, [_spec("p", module="inner", take="input", arg="nonexistent")], lambda *a: None):
            model(torch.randn(2, 3))
    with pytest.raises(ParityError, match="None"):
        with TorchCapture(model, [_spec("p", module="inner", take="input", arg="bias", where={"tag": "b"})],
                          lambda *a: None):
            model(torch.randn(2, 3))
    assert module_paths(model) == {"", "inner", "inner.lin"}


# ---------------------------------------------------------------------------------------------------------
# the family's probe map on the reference model
# ---------------------------------------------------------------------------------------------------------


def _expected_shapes(b, c, t, h, w, l, dc, d, heads, layers):
    s = t * (h // 2) * (w // 2)
    pad4 = -(-s // 16) * 16
    shapes = {
        "hidden_states_input": (b, c, t, h, w), "timestep_input": (b,), "encoder_hidden_states_input": (b, 1, l, dc),
        "attention_mask_input": (b, t, h, w), "encoder_attention_mask_input": (b, 1, l),
        "attention_mask_converted": (b, 1, s), "encoder_attention_mask_converted": (b, 1, l),
        "hidden_states_operate_on_patched_inputs": (b, s, d),
        "encoder_hidden_states_operate_on_patched_inputs": (b, l, d),
        "timestep_operate_on_patched_inputs": (b, 6 * d), "embedded_timestep_operate_on_patched_inputs": (b, d),
        "hidden_states_before_block": (s, b, d), "hidden_states_output": (b, c, t, h, w),
    }
    for g in (False, True):
        shapes[f"attention_mask_sparse_1_{g}"] = (b, heads, 1, s)
        shapes[f"encoder_attention_mask_sparse_1_{g}"] = (b, heads, 1, l)
        shapes[f"attention_mask_sparse_4_{g}"] = (4 * b, heads, 1, pad4 // 4)
        shapes[f"encoder_attention_mask_sparse_4_{g}"] = (4 * b, heads, 1, l)
    for i in range(layers):
        shapes[f"hidden_states_{i}_block"] = (s, b, d)
    return shapes


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_capture_records_every_probe_with_documented_shapes_and_is_bit_identical(precision):
    cfg = tiny_config()
    model = H.build_model(cfg, H.random_weights(cfg, 0), precision)
    inputs = make_inputs(5)  # B=2, C=8, T=3, H=10, W=6, L=5 -> S = 45 (Skiparse pads to 48)
    specs = family_capture_items("opensora_v13", 4)
    assert [s.name for s in specs] == probe_names(4)
    got, order = {}, []

    def on_probe(name, arr, dtype):
        order.append(name)
        got[name] = (arr.copy(), dtype)

    out_on = H.capture(model, inputs, specs, on_probe)
    out_off = H.forward(model, inputs)
    np.testing.assert_array_equal(out_on, out_off)
    assert sorted(order) == sorted(probe_names(4)) and len(order) == len(set(order))
    expected = _expected_shapes(2, 8, 3, 10, 6, 5, 32, 48, 2, 4)
    lowp = "bfloat16" if precision == "bf16" else "float32"
    for name, shape in expected.items():
        arr, dtype = got[name]
        assert arr.shape == shape, (name, arr.shape, shape)
        if name in ("hidden_states_input", "timestep_input", "attention_mask_input", "encoder_attention_mask_input"):
            assert dtype == "float32"
            np.testing.assert_array_equal(arr, inputs[name[:-len("_input")]])
        else:
            assert dtype == lowp, (name, dtype)
    np.testing.assert_array_equal(got["hidden_states_output"][0], out_off)
    # the block input of block 0 is the patch embedding, sequence-first
    np.testing.assert_array_equal(got["hidden_states_before_block"][0],
                                  got["hidden_states_operate_on_patched_inputs"][0].transpose(1, 0, 2))


def test_capture_works_after_a_previous_capture_and_module_paths_cover_the_map():
    cfg = tiny_config(num_layers=2, sparse1d=False, sparse_n=1)
    model = H.build_model(cfg, H.random_weights(cfg, 1), "fp32")
    specs = family_capture_items("opensora_v13", 2)
    paths = H.module_paths(model)
    assert {s.capture.module for s in specs} <= paths and "" in paths
    assert "transformer_blocks.1.attn1.to_out.0" in paths and "adaln_single.emb.timestep_embedder.linear_2" in paths
    a, b = {}, {}
    H.capture(model, make_inputs(6), specs, lambda n, arr, d: a.__setitem__(n, arr))
    H.capture(model, make_inputs(6), specs, lambda n, arr, d: b.__setitem__(n, arr))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
