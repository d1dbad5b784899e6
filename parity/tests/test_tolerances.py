"""parity.tolerances: the shipped file, the schema validation, lookups and the relative criterion."""

from __future__ import annotations

import copy
import json

import pytest

from parity.errors import ParityError
from parity.tolerances import (
    DEFAULT_PATH,
    MODES,
    PROBE_CLASSES,
    RelativeCriterion,
    load_profiles,
    relative_passed,
)


def _shipped() -> dict:
    return json.loads(DEFAULT_PATH.read_text())


def _write(tmp_path, data, name="tol.json"):
    p = tmp_path / name
    p.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return p


def test_shipped_file_is_consistent():
    """Structure of the shipped profiles; their calibration is tested by the parity and teeth suites."""
    prof = load_profiles()
    assert prof.version == 1 and prof.precisions == ["bf16", "fp16", "fp32"]
    t = prof.lookup("fp32", "embedding", "isolated")
    assert "exp" in t.reason and "angle" in t.reason
    assert t.relative is None and t.key == "fp32/embedding/isolated"
    assert t.context == "profile fp32/embedding/isolated"
    for prec in prof.precisions:
        for cls in ("input", "mask"):
            for mode in MODES:
                t = prof.lookup(prec, cls, mode)
                assert (t.atol, t.rtol) == (0, 0)
        for cls in ("embedding", "block", "output"):
            iso, acc = prof.lookup(prec, cls, "isolated"), prof.lookup(prec, cls, "accumulated")
            assert iso.atol <= acc.atol and iso.rtol <= acc.rtol, (prec, cls)
            assert iso.relative is None
            # low precision is judged reference-relative in accumulated mode; fp32 absolutely
            assert (acc.relative is not None) == (prec != "fp32"), (prec, cls)
    # the block tolerance must sit below a LayerNorm eps 1e-5 vs 1e-6 error (>= 2e-6 measured)
    assert prof.lookup("fp32", "block", "isolated").atol < 2e-6


def test_probe_classes_agree_with_the_model_family():
    from parity.families.opensora_v13.probes import PROBE_CLASSES as FAMILY_CLASSES
    assert tuple(FAMILY_CLASSES) == PROBE_CLASSES


def test_lookup_errors_name_the_file():
    prof = load_profiles()
    with pytest.raises(ParityError, match=r"tolerances\.json: no tolerance profile for precision 'fp8'"):
        prof.lookup("fp8", "block", "isolated")
    with pytest.raises(ParityError, match="no probe class 'attn'"):
        prof.lookup("fp32", "attn", "isolated")
    with pytest.raises(ParityError, match="no mode 'both'"):
        prof.lookup("fp32", "block", "both")


def test_user_file_and_round_trip(tmp_path):
    data = _shipped()
    data["profiles"] = {"fp64": copy.deepcopy(data["profiles"]["fp32"])}
    data["profiles"]["fp64"]["block"]["isolated"]["atol"] = 1e-12
    p = _write(tmp_path, data)
    prof = load_profiles(p)
    assert prof.path == str(p) and prof.precisions == ["fp64"]
    assert prof.lookup("fp64", "block", "isolated").atol == 1e-12
    again = load_profiles(_write(tmp_path, prof.to_dict(), "again.json"))
    assert again.table == prof.table


def _broken(mutate):
    data = _shipped()
    mutate(data)
    return data


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d.update(extra=1), r"top level: unknown key\(s\) 'extra'"),
    (lambda d: d.pop("version"), r"top level: missing key\(s\) 'version'"),
    (lambda d: d.update(version=2), "unsupported version 2"),
    (lambda d: d.update(version=True), "unsupported version True"),
    (lambda d: d.update(profiles={}), "profiles: must be a non-empty object"),
    (lambda d: d["profiles"]["fp32"].pop("mask"), r"profiles\.fp32: missing key\(s\) 'mask'"),
    (lambda d: d["profiles"]["fp32"].update(attn={}), r"profiles\.fp32: unknown key\(s\) 'attn'"),
    (lambda d: d["profiles"]["fp32"]["block"].pop("accumulated"), r"profiles\.fp32\.block: missing key"),
    (lambda d: d["profiles"]["fp32"]["block"]["isolated"].update(atol=-1e-5),
     r"profiles\.fp32\.block\.isolated\.atol: must be >= 0, got -1e-05"),
    (lambda d: d["profiles"]["fp32"]["block"]["isolated"].update(rtol="1e-5"),
     r"profiles\.fp32\.block\.isolated\.rtol: must be a finite number"),
    (lambda d: d["profiles"]["fp32"]["block"]["isolated"].pop("reason"), r"missing key\(s\) 'reason'"),
    (lambda d: d["profiles"]["fp32"]["block"]["isolated"].update(reason="  "), "non-empty one-line string"),
    (lambda d: d["profiles"]["fp32"]["block"]["isolated"].update(reason="a\nb"), "must be one line"),
    (lambda d: d["profiles"]["fp32"]["block"]["isolated"].update(tol=1), r"unknown key\(s\) 'tol'"),
    (lambda d: d["profiles"]["bf16"]["block"]["accumulated"]["relative"].update(k=-2),
     r"profiles\.bf16\.block\.accumulated\.relative\.k: must be >= 0"),
    (lambda d: d["profiles"]["bf16"]["block"]["accumulated"]["relative"].pop("reason"),
     r"relative: missing key\(s\) 'reason'"),
    (lambda d: d["profiles"].update({"fp 32": {}}), "precision names"),
])
def test_schema_errors(tmp_path, mutate, match):
    p = _write(tmp_path, _broken(mutate))
    with pytest.raises(ParityError, match=match) as ei:
        load_profiles(p)
    assert str(p) in str(ei.value) and "\n" not in str(ei.value)


def test_file_errors(tmp_path):
    with pytest.raises(ParityError, match="tolerance file not found"):
        load_profiles(tmp_path / "nope.json")
    with pytest.raises(ParityError, match="not valid JSON"):
        load_profiles(_write(tmp_path, "{not json"))
    with pytest.raises(ParityError, match="not valid JSON"):
        load_profiles(_write(tmp_path, '{"version": 1, "profiles": {"fp32": NaN}}'))
    with pytest.raises(ParityError, match="top level: must be an object"):
        load_profiles(_write(tmp_path, "[1, 2]"))


def test_relative_passed():
    c = RelativeCriterion(k=2, floor=1e-3, reason="r")
    assert relative_passed(0.021, 0.01, c)
    assert relative_passed(0.0, 0.0, c)
    assert relative_passed(1e-3, 0.0, c)
    assert not relative_passed(0.0211, 0.01, c)
    assert not relative_passed(float("nan"), 0.01, c)
    assert not relative_passed(0.0, float("nan"), c)
    assert not relative_passed(float("inf"), 0.01, c)
    assert not relative_passed(None, 0.01, c)


def test_a_family_includes_another_familys_profiles_under_a_prefix():
    """The pipeline family takes the text encoder's bounds from mt5_encoder/tolerances.json, not a copy."""
    from parity.families import get_family
    from parity.tolerances import family_path

    pipe = load_profiles(family_path("pipeline"), classes=get_family("pipeline").PROBE_CLASSES)
    mt5 = load_profiles(family_path("mt5_encoder"))
    for prec in ("fp32", "fp16"):
        for cls in ("input", "mask", "embedding", "block", "output"):
            for mode in ("isolated", "accumulated"):
                got, want = pipe.lookup(prec, f"text_encoder.{cls}", mode), mt5.lookup(prec, cls, mode)
                assert (got.atol, got.rtol, got.relative, got.reason) == (want.atol, want.rtol, want.relative,
                                                                          want.reason)
                assert got.key == f"{prec}/text_encoder.{cls}/{mode}"


@pytest.mark.parametrize("include, needle", [
    ([{"family": "no_such_family", "prefix": "x."}], "no tolerance file for family"),
    ([{"family": "mt5_encoder", "prefix": "x"}], "must be a string ending in '.'"),
    ([{"family": "mt5_encoder"}], "missing key"),
    ({"family": "mt5_encoder", "prefix": "x."}, "must be a list"),
])
def test_bad_includes_are_refused_naming_the_file(tmp_path, include, needle):
    data = load_profiles().to_dict()
    data["include"] = include
    p = _write(tmp_path, data)
    with pytest.raises(ParityError, match=needle) as exc:
        load_profiles(p)
    assert str(p) in str(exc.value)


def test_an_included_file_may_not_include_others(tmp_path, monkeypatch):
    import parity.tolerances as T

    inner = load_profiles().to_dict()
    inner["include"] = [{"family": "mt5_encoder", "prefix": "y."}]
    (tmp_path / "inner").mkdir()
    _write(tmp_path / "inner", inner, "tolerances.json")
    monkeypatch.setattr(T, "family_path", lambda family: tmp_path / "inner" / "tolerances.json")
    outer = load_profiles().to_dict()
    outer["include"] = [{"family": "inner", "prefix": "x."}]
    with pytest.raises(ParityError, match="may not include others"):
        load_profiles(_write(tmp_path, outer, "outer.json"))
