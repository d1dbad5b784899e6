"""A denoiser plug-in run inside the CFG sampling loop: the plug-in of the ``pipeline`` family.

``PipelinePlugin(inner)`` wraps any reference or subject plug-in of a denoiser family (``torch-reference``,
``ms_impl``, a third-party port) and implements the pipeline family's contract:

* ``build``: the denoiser through ``inner`` (its overlay applies: the prediction is taken from the family's
  ``PIPELINE_OUTPUT_PROBE`` in the reference layout), and the scheduler: ``inner.make_scheduler(num_steps,
  config)`` when the plug-in has one (torch-reference: diffusers; ms_impl: mindone.diffusers), else — or with
  option ``scheduler=numpy`` — the float64 numpy Euler-Ancestral (``parity.pipeline.numpy_scheduler``);
* ``capture``: the free-running loop, every step's records reported as probes ``step_{k}_{record}``;
* ``run_step``: per-step mode, step k from the reference's latents and recorded draw (each record of the step is
  a teacher step; the step runs once and its records are served from it).

The recorded noise (float32 draws in the dump) is cast once to the latents' dtype (fp32 or fp16) on both sides.
``scheduler_overrides`` / ``loop_options`` make a deliberately wrong sampler (``parity.pipeline.variants``).

With a text encoder in the config (``parity.families.pipeline.text_encoder``) the same plug-in also builds the
encoder (its family's glue; the options apply, e.g. ms_impl's ``mt5-substitutions``): ``capture`` runs it once,
reports its probes ``text_encoder.<probe>`` before the loop's and samples with its ``prompt_embeds``;
``run_step`` teacher-forces it with its family's plan.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from parity.errors import ParityError
from parity.plugins.contract import BuildRequest, OptionSpec
from parity.runner import ModelRun

from parity.adapters import get_adapter
from parity.families.pipeline.steps import parse_step_probe
from parity.families.pipeline.text_encoder import (OUTPUT_PROBE as TE_OUTPUT, STEP_KIND as TE_STEP_KIND,
                                                   encoder_inputs, inner_step, prefixed, split_weights, unprefixed)

from .loop import LoopOptions, run_cfg_loop, run_step
from .numpy_scheduler import NumpyEulerAncestral

LATENT_DTYPES = {"fp32": np.float32, "fp16": np.float16}
SCHEDULERS = ("plugin", "numpy")
INPUT_PROBES = ("initial_latents", "encoder_hidden_states", "encoder_attention_mask")


class PipelineModel:
    """The built pipeline: the denoiser's ``ModelRun`` (model built), a scheduler factory and the latents' dtype."""

    def __init__(self, config, run: ModelRun, make_scheduler, dtype, scheduler_label: str,
                 text_encoder: ModelRun | None = None):
        self.config, self.run, self.make_scheduler = config, run, make_scheduler
        self.text_encoder = text_encoder
        self.dtype, self.scheduler_label = dtype, scheduler_label
        self.fam = config.denoiser_module()
        self._step_scheduler = None
        self._cached: tuple | None = None     # (key, records) of the last per-step run

    def denoiser(self, encoder_hidden_states, encoder_attention_mask):
        """The loop's model callable: ``(model_input, timestep) -> prediction`` in the latents' dtype."""
        out_probe = self.fam.PIPELINE_OUTPUT_PROBE

        def call(model_input: np.ndarray, timestep: np.ndarray) -> np.ndarray:
            inputs = self.fam.normalize_inputs(self.fam.pipeline_inputs(model_input, timestep, encoder_hidden_states,
                                                                         encoder_attention_mask),
                                               self.run.config, source="pipeline step")
            got = {}
            self.run.capture(inputs, lambda n, a, _dt=None: got.__setitem__(n, a), names={out_probe})
            if out_probe not in got:
                raise ParityError(f"the denoiser plug-in {self.run.plugin.name} did not produce {out_probe}, the "
                                  "prediction the sampler needs; fix its overlay")
            out = self.run.to_reference(out_probe, got[out_probe], self.run.context(inputs))
            c = model_input.shape[1]
            if out.shape[1] == 2 * c:   # learned variance: the sampler uses the first half
                out = out[:, :c]
            return np.asarray(out).astype(model_input.dtype)
        return call

    def step_scheduler(self):
        if self._step_scheduler is None:
            self._step_scheduler = self.make_scheduler()
        return self._step_scheduler


class PipelinePlugin:
    def __init__(self, inner, side: str = "subject", scheduler_overrides: dict | None = None,
                 loop_options: LoopOptions | None = None, variant: str | None = None):
        self.inner, self.side = inner, side
        self.name = inner.name
        self.framework = inner.framework
        self.families = ("pipeline",)
        self.source = getattr(inner, "source", None)
        self.scheduler_overrides = dict(scheduler_overrides or {})
        self.loop_options = loop_options or LoopOptions()
        self.variant = variant
        self.options = {**dict(getattr(inner, "options", {}) or {}),
                        "scheduler": OptionSpec("pipeline runs: plugin (the plug-in's own scheduler: diffusers for "
                                                "torch-reference, mindone.diffusers for ms_impl) or numpy (float64 "
                                                "formulas, parity.pipeline.numpy_scheduler); default plugin",
                                                choices=SCHEDULERS)}

    # ---- identity ----------------------------------------------------------------------------------------------
    def describe(self) -> dict:
        d = dict(self.inner.describe())
        d["pipeline"] = {"denoiser_plugin": self.inner.name, "variant": self.variant,
                         "scheduler_overrides": self.scheduler_overrides,
                         "loop_options": vars(self.loop_options) if hasattr(self.loop_options, "__dict__") else {}}
        return d

    def overlay(self, family: str, config: dict):
        return None

    def capture_root(self, model):
        return model

    def precision_label(self, precision: str, device: str) -> str:
        return self.inner.precision_label(precision, device)

    def check_device(self, device: str) -> None:
        getattr(self.inner, "check_device", lambda _d: None)(device)

    def session(self, threads: int = 1):
        return self.inner.session(threads)

    def random_weights(self, family: str, config: dict, seed: int) -> dict:
        from parity.families.pipeline.config import PipelineConfig
        cfg = PipelineConfig.from_dict(config, source="config")
        return self.inner.random_weights(cfg.denoiser_family, cfg.denoiser.to_dict(), seed)

    # ---- build -------------------------------------------------------------------------------------------------
    def build(self, request: BuildRequest) -> PipelineModel:
        from parity.families.pipeline.config import PipelineConfig

        if request.precision not in LATENT_DTYPES:
            raise ParityError(f"pipelines run in {' or '.join(LATENT_DTYPES)} (upstream samples in fp16), not "
                              f"{request.precision}; pass --precision fp32 or fp16")
        cfg = PipelineConfig.from_dict(request.config, source="config")
        options = dict(request.options)
        choice = options.pop("scheduler", None) or "plugin"
        den_weights, te_weights = split_weights(cfg, request.weights)
        run = ModelRun(self.inner, cfg.denoiser_family, cfg.denoiser, side=self.side)
        run.build(den_weights, request.precision, request.device, options)
        te_run = None
        if cfg.text_encoder is not None:
            te_run = ModelRun(self.inner, cfg.text_encoder_family, cfg.text_encoder, side=self.side)
            te_run.build(te_weights, request.precision, request.device, options)
        sched_cfg = dict(cfg.scheduler, **self.scheduler_overrides)
        own = getattr(self.inner, "make_scheduler", None)
        if choice == "plugin" and own is not None:
            def make():
                return own(cfg.num_inference_steps, sched_cfg)
            label = f"{self.inner.name}'s scheduler"
        else:
            def make():
                return NumpyEulerAncestral(cfg.num_inference_steps, sched_cfg)
            label = "numpy float64 Euler-Ancestral"
        return PipelineModel(cfg, run, make, LATENT_DTYPES[request.precision], label, te_run)

    def forward(self, model, family: str, inputs: dict):
        return self.capture(model, family, inputs, None, lambda *_a: None)

    # ---- free-running ------------------------------------------------------------------------------------------
    def capture(self, model: PipelineModel, family: str, inputs: dict, items, on_probe, mode: str = "accumulated"):
        wanted = None if items is None else {it.name for it in items}

        def emit(name: str, array) -> None:
            if wanted is None or name in wanted:
                array = np.asarray(array)
                on_probe(name, array, array.dtype.name)

        text = self._text(model, inputs, emit, wanted)
        latents = np.asarray(inputs["initial_latents"]).astype(model.dtype)
        emit("initial_latents", latents)
        emit("encoder_hidden_states", text["encoder_hidden_states"])
        emit("encoder_attention_mask", text["encoder_attention_mask"])
        if wanted is not None and not any(parse_step_probe(n) for n in wanted):
            return None
        noise = [np.asarray(n).astype(model.dtype) for n in inputs["noise"]]

        def on_step(k: int, rec: dict) -> None:
            for record, array in rec.items():
                emit(f"step_{k}_{record}", array)
            emit(f"step_{k}_noise", noise[k])

        records = run_cfg_loop(model.denoiser(text["encoder_hidden_states"], text["encoder_attention_mask"]),
                               model.make_scheduler(), latents, noise, options=self._options(model),
                               num_steps=model.config.num_inference_steps, on_step=on_step)
        return records[-1]["latents_out"] if records else latents

    @staticmethod
    def _text(model: PipelineModel, inputs: dict, emit, wanted) -> dict:
        """The loop's text conditioning: given, or this side's text encoder run once (its probes reported)."""
        if model.text_encoder is None:
            return {k: inputs[k] for k in ("encoder_hidden_states", "encoder_attention_mask")}
        te = model.text_encoder
        te_inputs = te.fam.normalize_inputs(encoder_inputs(inputs), te.config, source="pipeline text encoder")
        context, got = te.context(te_inputs), {}

        def on_probe(name, array, _dt=None):
            got[name] = array = te.to_reference(name, array, context)
            emit(prefixed(name), array)

        needed = None if wanted is None or any(parse_step_probe(n) or n == "encoder_hidden_states" for n in wanted) \
            else {unprefixed(n) for n in wanted if unprefixed(n)}
        if needed is not None and not needed:
            return {"encoder_hidden_states": None, "encoder_attention_mask": te_inputs["attention_mask"]}
        te.capture(te_inputs, on_probe, names=None if needed is None else needed | {TE_OUTPUT})
        if TE_OUTPUT not in got:
            raise ParityError(f"the text encoder plug-in {te.plugin.name} did not produce {TE_OUTPUT}, the prompt "
                              "embeddings the loop needs; fix its overlay")
        return {"encoder_hidden_states": np.asarray(got[TE_OUTPUT]).astype(np.float32),
                "encoder_attention_mask": te_inputs["attention_mask"]}

    def _options(self, model: PipelineModel) -> LoopOptions:
        return dataclasses.replace(self.loop_options, guidance_scale=model.config.guidance_scale)

    # ---- per step ----------------------------------------------------------------------------------------------
    def run_step(self, model: PipelineModel, step, teacher: dict) -> np.ndarray:
        if step.kind == TE_STEP_KIND and model.text_encoder is not None:
            te, (inner, context) = model.text_encoder, inner_step(step)
            fed = {role: np.ascontiguousarray(get_adapter(te.views[src].adapter, te.adapters)
                                              .from_reference(np.asarray(teacher[role]), **context), dtype=np.float32)
                   for role, src in inner.inputs.items()}
            return te.to_reference(inner.probe, self.inner.run_step(te.model, inner, fed), context)
        if step.kind != "step":
            raise ParityError(f"pipeline: unknown step kind {step.kind!r} for {step.probe}")
        k, record = step.index, step.params["record"]
        latents = np.asarray(teacher["latents"]).astype(model.dtype)
        noise = np.asarray(teacher["noise"]).astype(model.dtype)
        if record == "noise":
            return noise
        key = (k, hashlib.sha1(latents.tobytes() + noise.tobytes()).hexdigest())
        if model._cached is None or model._cached[0] != key:
            rec = run_step(model.denoiser(teacher["encoder_hidden_states"], teacher["encoder_attention_mask"]),
                           model.step_scheduler(), k, latents, noise, options=self._options(model))
            model._cached = (key, rec)
        return model._cached[1][record]
