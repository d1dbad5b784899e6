"""The reference side's commands: ``cases``, ``plugins``, ``dump`` (models and pipelines), ``ingest``, ``convert``."""

from __future__ import annotations

import os

from parity.errors import EXIT_OK, ParityError
from parity.cli.common import check_output, load_json_arg, progress_line, reference_args, require_file, say


def cmd_plugins(args) -> int:
    from parity.plugins import DEFAULTS, load_plugin, registered

    for side in ("reference", "subject"):
        print(f"{side}s (--{side} NAME):")
        for name, ep in sorted(registered(side).items()):
            marker = " (default)" if name == DEFAULTS[side] else ""
            try:
                plugin = load_plugin(name, side)
                families = ", ".join(plugin.families)
                options = ", ".join(f"{k}={'|'.join(v.choices) if v.choices else '…'}"
                                    for k, v in (plugin.options or {}).items())
                print(f"  {name:<22} {plugin.framework:<10} {families}{marker}"
                      + (f"  options: {options}" if options else ""))
            except ParityError as exc:
                print(f"  {name:<22} (cannot be loaded here: {exc}){marker}")
    return EXIT_OK


def cmd_cases(args) -> int:
    from parity.families import FAMILIES, get_family

    print(f"{'case':<16} {'family':<14} {'layers':>6} {'D':>5}  description")
    for name in [args.family] if args.family else FAMILIES:
        fam = get_family(name)
        for case in fam.builtin_cases().values():
            cfg = fam.parse_config(case.config)
            marker = " (default)" if case.name == fam.default_case_name() else ""
            print(f"{case.name:<16} {name:<14} {fam.num_layers(cfg):>6} {cfg.hidden_size:>5}  "
                  f"{case.description}{marker}")
    return EXIT_OK


TEXT_ENCODER_FLAGS = ("text_encoder_config", "text_encoder_weights", "text_encoder_seed", "input_ids")


def cmd_dump(args) -> int:
    from parity.dumping import dump_reference
    from parity.families import family_for_config, family_of_case, get_family
    from parity.inputs_io import load_tensor_file

    check_output(args.out, "--out", "dump")
    pipeline_flags = [f for f in ("steps", "guidance", "prompts", "latent_size", "noise_seed") + TEXT_ENCODER_FLAGS
                      if getattr(args, f) is not None]
    if args.pipeline and not args.case:
        return _dump_pipeline(args)
    if pipeline_flags and args.case:
        raise ParityError(f"--{pipeline_flags[0].replace('_', '-')}: a built-in case fixes its steps, guidance, "
                          f"prompts and noise; drop it, or dump your own pipeline with --pipeline --config … "
                          f"--weights|--seed … --prompts …")
    if pipeline_flags:
        raise ParityError(f"--{pipeline_flags[0].replace('_', '-')} belongs to a pipeline dump; add --pipeline (with "
                          "--config/--weights|--seed/--prompts) or drop it")
    if args.case:
        if args.config or args.inputs or args.weights:
            raise ParityError("--case builds config, weights and inputs itself; drop --config/--weights/--inputs")
        family = family_of_case(args.case, args.family)
        if args.pipeline and family != "pipeline":
            raise ParityError(f"--pipeline --case {args.case}: not a pipeline case; 'parity cases --family pipeline' "
                              "lists them")
        case = get_family(family).builtin_cases()[args.case]
        seed = case.weights_seed if args.seed is None else args.seed
        summary = dump_reference(out=args.out, config=case.config, inputs=case.make_inputs(), seed=seed,
                                 precision=args.precision, case=case.name, inputs_seed=case.inputs_seed,
                                 force=args.force, family=family, progress=progress_line, threads=args.threads,
                                 stats_only=args.stats_only, **reference_args(args))
    else:
        if not (args.config and args.inputs) or (args.weights is None) == (args.seed is None):
            raise ParityError("pass --case NAME, or --config C.json --inputs IN and exactly one of "
                              "--weights W.safetensors / --seed N")
        config = load_json_arg(args.config, "config")
        family = family_for_config(config, args.family, args.config)
        fam = get_family(family, source=args.config)
        cfg = fam.parse_config(config, source=args.config)
        check_header = getattr(fam, "check_input_header", None)
        inputs = load_tensor_file(args.inputs, "inputs", check=None if check_header is None else (
            lambda header: check_header(cfg, header, source=f"{args.config} (with {args.inputs})")))
        summary = dump_reference(out=args.out, config=config, inputs=inputs, weights_path=args.weights,
                                 seed=args.seed, precision=args.precision, force=args.force, family=family,
                                 config_source=args.config, inputs_source=args.inputs, progress=progress_line,
                                 threads=args.threads, stats_only=args.stats_only, **reference_args(args))
    if summary["nonfinite"]:
        say(f"warning: reference states with NaN/Inf: {', '.join(summary['nonfinite'][:5])}")
    print(f"wrote {summary['out']} ({summary['probes']} probes, {summary['precision']}, reference "
          f"{summary['reference']})")
    return EXIT_OK


def _dump_pipeline(args) -> int:
    """``parity dump --pipeline``: a denoiser config and weights, prompt embeddings, steps, guidance, latent size
    and a noise seed -> a pipeline dump (parity.families.pipeline)."""
    from parity.dumping import dump_reference, resolve_reference
    from parity.families import family_for_config, get_family
    from parity.inputs_io import load_tensor_file
    from parity.pipeline.prompts import pipeline_config, pipeline_inputs, text_encoder_weights

    if args.inputs:
        raise ParityError("--pipeline takes the prompt embeddings as --prompts P.safetensors (and makes the noise "
                          "itself from --noise-seed); drop --inputs")
    text_encoder = any(getattr(args, f) is not None for f in TEXT_ENCODER_FLAGS)
    text = args.input_ids if text_encoder else args.prompts
    if text_encoder and (args.prompts or not (args.text_encoder_config and args.input_ids)
                         or (args.text_encoder_weights is None) == (args.text_encoder_seed is None)):
        raise ParityError("--pipeline with a text encoder needs --text-encoder-config MT5.json, exactly one of "
                          "--text-encoder-weights W / --text-encoder-seed N and --input-ids IDS (not --prompts: the "
                          "embeddings are the encoder's)")
    if not (args.config and text and args.latent_size) or (args.weights is None) == (args.seed is None):
        raise ParityError("--pipeline needs --config (the denoiser's config.json), exactly one of --weights W / --seed "
                          "N, --prompts P.safetensors (or a text encoder and --input-ids) and --latent-size T H W (or "
                          "--case NAME of 'parity cases --family pipeline')")
    require_file(text, "token ids file" if text_encoder else "prompts file")
    denoiser = load_json_arg(args.config, "config")
    den_family = family_for_config(denoiser, args.family if args.family != "pipeline" else None, args.config)
    te_config = load_json_arg(args.text_encoder_config, "text encoder config") if text_encoder else None
    te_family = family_for_config(te_config, None, args.text_encoder_config) if text_encoder else None
    te = {"text_encoder_family": te_family, "text_encoder": te_config}
    flags = {"num_inference_steps": "--steps", "guidance_scale": "--guidance"}
    try:
        get_family("pipeline").parse_config(pipeline_config(den_family, denoiser, steps=args.steps,
                                                            guidance=args.guidance, source=args.config, **te),
                                            source="(command line)")
    except ParityError as exc:   # a value given on the command line is named by its flag, not by the config file
        message = str(exc)
        for key, flag in flags.items():
            if message.startswith(f"(command line): {key}"):
                raise ParityError(message.replace(f"(command line): {key}", flag, 1)) from None
    config = pipeline_config(den_family, denoiser, steps=args.steps, guidance=args.guidance, source=args.config, **te)
    prompts = load_tensor_file(text, "token ids" if text_encoder else "prompts")
    cfg = get_family("pipeline").parse_config(config, source=args.config)
    inputs = pipeline_inputs(cfg, prompts, args.latent_size, args.noise_seed or 0, source=text)
    weights = None
    if text_encoder:   # one state dict: the denoiser's and the encoder's under text_encoder.
        ref, _ = resolve_reference(args.reference, args.reference_path, args.reference_option, "pipeline")
        weights = (load_tensor_file(args.weights, "weights") if args.weights is not None
                   else ref.random_weights("pipeline", config, args.seed))
        weights.update(text_encoder_weights(ref, cfg, args.text_encoder_weights, args.text_encoder_seed))
    summary = dump_reference(out=args.out, config=config, inputs=inputs, weights=weights,
                             weights_path=None if text_encoder else args.weights, seed=args.seed,
                             precision=args.precision, force=args.force, family="pipeline", config_source=args.config,
                             inputs_source=text, progress=progress_line, threads=args.threads,
                             inputs_seed=args.noise_seed or 0, **reference_args(args))
    print(f"wrote {summary['out']} (pipeline: {cfg.num_inference_steps} steps, guidance {cfg.guidance_scale:g}, "
          f"{summary['probes']} probes, {summary['precision']}, reference {summary['reference']})")
    return EXIT_OK


def cmd_ingest(args) -> int:
    from parity.dumping import ingest_legacy

    from parity.families import family_for_config

    check_output(args.out, "--out", "dump")
    config = load_json_arg(args.config, "config")
    args.family = family_for_config(config, args.family, args.config)
    if args.source == "msprobe":
        return _ingest_msprobe(args, config)
    s = ingest_legacy(args.legacy_dir, out=args.out, config=config, weights_path=args.weights,
                      precision=args.precision, force=args.force, family=args.family, config_source=args.config)
    print(f"found {len(s['found'])} probes: {', '.join(s['found'])}")
    print(f"missing {len(s['missing'])} probes" + (f": {', '.join(s['missing'])}" if s["missing"] else ""))
    if s["ignored"]:
        print(f"ignored {len(s['ignored'])} unknown files: {', '.join(s['ignored'])}")
    print(f"wrote {s['out']} ({s['precision']})")
    return EXIT_OK


def _ingest_msprobe(args, config: dict) -> int:
    from parity.ingest.msprobe import ingest_msprobe

    s = ingest_msprobe(args.legacy_dir, out=args.out, config=config, weights_path=args.weights,
                       precision=args.precision, force=args.force, family=args.family, config_source=args.config,
                       subject=args.subject, subject_path=args.subject_path, progress=progress_line)
    print(f"msprobe {s['framework']} {s['level']} dump ({s['side']} side, modules under {s['prefix'] or '(root)'!r})")
    print(f"found {len(s['found'])} probes: {', '.join(s['found'])}")
    groups: dict = {}
    for m in s["missing"]:
        groups.setdefault((m["reason"], m["fix"]), []).append(m["name"])
    print(f"missing {len(s['missing'])} probes" + (":" if s["missing"] else ""))
    for (reason, fix), names in groups.items():
        print(f"  {', '.join(names)}: {reason}; fix: {fix}")
    if s["unfed"]:
        print(f"isolated mode cannot feed {len(s['unfed'])} step(s):")
        for u in s["unfed"]:
            print(f"  {u.probe}: needs {', '.join(u.needs)}")
    print(f"wrote {s['out']} ({s['precision']})")
    return EXIT_OK


def _infer_config(tensors: dict, source: str, family: str | None) -> tuple[str, dict]:
    """(family, config) inferred from a state dict's names and shapes, by the families that can."""
    from parity.families import FAMILIES, get_family

    problems = []
    for name in [family] if family else FAMILIES:
        infer = getattr(get_family(name), "infer_config", None)
        if infer is None:
            continue
        try:
            return name, infer({k: v.shape for k, v in tensors.items()}, source=source)
        except ParityError as exc:
            problems.append(str(exc))
    raise ParityError(problems[0] if len(problems) == 1 else
                      f"{source}: no model family recognises these weights; pass --config (the model's config.json)")


def cmd_convert(args) -> int:
    from parity.families import family_for_config, get_family
    from parity.inputs_io import load_tensor_file
    from parity.safetensors_io import load_safetensors_dtypes, save_safetensors

    from parity.weights import check_state_dict

    if os.path.lexists(args.dst) and not args.force:
        raise ParityError(f"{args.dst}: exists; pass --force to overwrite")
    check_output(args.dst, "--dst", "file")
    if os.path.exists(args.dst) and os.path.exists(args.src) and os.path.samefile(args.src, args.dst):
        raise ParityError(f"{args.dst}: is the --src file itself; write the converted weights to a new file")
    tensors = load_tensor_file(args.src, "weights")
    if args.config:
        config = load_json_arg(args.config, "config")
        args.family = family_for_config(config, args.family, args.config)
        fam = get_family(args.family)
        cfg = fam.parse_config(config, source=args.config)
    else:
        args.family, inferred = _infer_config(tensors, args.src, args.family)
        fam = get_family(args.family)
        cfg = fam.parse_config(inferred, source=f"{args.src} (config inferred from the weights; pass --config)")
    check_state_dict(tensors, fam.expected_state_dict_shapes(cfg), source=args.src)
    config = cfg.to_dict()
    from parity.plugins import load_plugin

    subject = load_plugin(args.subject, "subject", args.subject_path)
    if not hasattr(subject, "convert_weights"):
        raise ParityError(f"--subject {subject.name}: the plug-in keeps the reference's parameter names (it has no "
                          f"convert_weights); there is nothing to convert")
    out = subject.convert_weights(tensors, args.family, config, "reference" if args.to == "torch" else "subject")
    dtypes = load_safetensors_dtypes(args.src) if args.src.endswith(".safetensors") else None
    save_safetensors(args.dst, out, dtypes={k: dtypes[k] for k in out if k in dtypes} if dtypes else None,
                     replace=args.force)
    print(f"wrote {args.dst} ({len(out)} tensors, {'reference' if args.to == 'torch' else subject.name} names)")
    return EXIT_OK
