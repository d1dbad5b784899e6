"""The text encoder inside a pipeline dump: its family's probes, recorded once before step 0.

A pipeline config with ``text_encoder_family`` / ``text_encoder`` takes token ids instead of prompt embeddings:
the dump's inputs hold ``text_input_ids`` and ``text_attention_mask`` (2B rows, [negative, positive]); each side
runs its own encoder (the same plug-in as the denoiser, family ``text_encoder_family``) on them, records its
probes as ``text_encoder.<probe>`` (class ``text_encoder.<class>``, in the reference layout) and feeds its
``prompt_embeds`` to the loop as ``encoder_hidden_states`` (the mask is the tokenizer's). Weights are the
denoiser's state dict plus the encoder's under ``text_encoder.``.

Per-step mode teacher-forces the encoder with its own family's plan (prefixed); the loop's steps take the
reference's ``encoder_hidden_states``. Free-running, the subject's loop uses the subject's own embeddings, so an
encoder error propagates into every step.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from parity.probemap import CaptureSpec, Probe, SideView, load_probe_map
from parity.teacher import TeacherStep

PREFIX = "text_encoder."
OUTPUT_PROBE = "prompt_embeds"      # the encoder probe the loop takes as encoder_hidden_states
LOOP_TEXT = "encoder_hidden_states"
INPUT_NAMES = ("text_input_ids", "text_attention_mask")
ENCODER_INPUTS = {"text_input_ids": "input_ids", "text_attention_mask": "attention_mask"}
STEP_KIND = "text_encoder"
CLASSES = ("input", "mask", "embedding", "block", "output")   # the encoder family's classes, prefixed
_RECORDED = CaptureSpec.parse({"module": "", "take": "output"}, "text encoder probe")


def prefixed(name: str) -> str:
    return PREFIX + name


def unprefixed(name: str) -> str | None:
    return name[len(PREFIX):] if name.startswith(PREFIX) else None


def probe_class(cls: str) -> str:
    return PREFIX + cls


def encoder_inputs(inputs: dict) -> dict:
    """The encoder's own inputs from a pipeline dump's."""
    return {ENCODER_INPUTS[k]: np.asarray(inputs[k]) for k in INPUT_NAMES}


def probes(config) -> list[Probe]:
    """The encoder's probes, prefixed, captured by the pipeline plug-in itself (already in the reference layout)."""
    if config.text_encoder is None:
        return []
    fam = config.text_encoder_module()
    out = []
    for name, cls, block, path in _probe_rows(config, fam):
        view = SideView(f"text encoder: {path}", _RECORDED)
        out.append(Probe(prefixed(name), probe_class(cls), block, view, view, prefixed(name)))
    return out


def adjust_probes(config, loop_probes: list[Probe]) -> list[Probe]:
    if config.text_encoder is None:
        return loop_probes
    out_class = probe_class(_output_class(config))
    return probes(config) + [dataclasses.replace(p, probe_class=out_class) if p.name == LOOP_TEXT else p
                             for p in loop_probes]


def _output_class(config) -> str:
    return next(cls for name, cls, _b, _p in _probe_rows(config, config.text_encoder_module()) if name == OUTPUT_PROBE)


def _probe_rows(config, fam):
    for p in load_probe_map(config.text_encoder_family).resolve(fam.num_layers(config.text_encoder)):
        yield p.name, p.probe_class, p.block, p.reference_path


def probe_names(config) -> list[str]:
    return [p.name for p in probes(config)]


def teacher_plan(config, inputs) -> list[TeacherStep]:
    """The encoder family's plan, every probe prefixed; the original kind travels in ``params``."""
    if config.text_encoder is None or inputs is None:
        return []
    fam, te_inputs = config.text_encoder_module(), encoder_inputs(inputs)
    plan = fam.teacher_plan(config.text_encoder, te_inputs)
    context = tuple(sorted(fam.adapter_context(config.text_encoder, te_inputs).items()))
    out = [TeacherStep(prefixed(s.probe), STEP_KIND, s.index, {r: prefixed(p) for r, p in s.inputs.items()},
                       {"probe": s.probe, "kind": s.kind, "params": tuple(sorted(s.params.items())),
                        "context": context}) for s in plan]
    # per step, the loop's text is the encoder's output step on the reference's inputs too
    return out + [dataclasses.replace(s, probe=LOOP_TEXT) for s in out if s.params["probe"] == OUTPUT_PROBE]


def inner_step(step: TeacherStep) -> tuple[TeacherStep, dict]:
    """The encoder family's own step behind a prefixed one, and the encoder's adapter context."""
    inner = TeacherStep(step.params["probe"], step.params["kind"], step.index,
                        {r: unprefixed(p) for r, p in step.inputs.items()}, dict(step.params["params"]))
    return inner, dict(step.params["context"])


def expected_shapes(config) -> dict:
    if config.text_encoder is None:
        return {}
    shapes = config.text_encoder_module().expected_state_dict_shapes(config.text_encoder)
    return {prefixed(k): s for k, s in shapes.items()}


def split_weights(config, weights) -> tuple[dict, dict]:
    """(denoiser weights, encoder weights without the prefix)."""
    if config.text_encoder is None:
        return weights, {}
    den, te = {}, {}
    for k in weights.keys():
        name = unprefixed(k)
        if name is None:
            den[k] = weights[k]
        else:
            te[name] = weights[k]
    return den, te
