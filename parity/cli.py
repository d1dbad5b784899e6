"""``parity`` command line: dump, ingest, cases, convert, compare, report, verify.

Exit codes: 0 success (compare: every probe passed), 1 parity failure (compare), 2 bad input. Bad input is
one line on stderr and no traceback (``--debug`` shows it).
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import sys
import traceback

from parity.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_PARITY_FAILURE, ParityError, printable
from parity.heap import return_large_blocks_to_os

MODE_CHOICES = ("isolated", "accumulated", "both")
MAX_THREADS = 1024


def _require_file(path: str, what: str, dir_ok: bool = False) -> None:
    """A FIFO or device given as an input file would block or never end: refuse it up front."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # the reader reports missing/unreadable files itself
    if not (stat.S_ISREG(mode) or (dir_ok and stat.S_ISDIR(mode))):
        raise ParityError(f"{path}: {what} is not a regular file; pass the {what} itself")


def _load_json(path: str, what: str) -> dict:
    from parity.jsonio import load_json

    return load_json(path, what, f"fix it or pass the model's own {what}.json")


def _threads(text: str) -> int:
    """argparse type of --threads: an integer in [1, MAX_THREADS] (torch overflows on 2**40)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text[:40]!r}") from None
    if not 1 <= n <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be in [1, {MAX_THREADS}], got {text[:40]}")
    return n


def _say(msg: str) -> None:
    print(printable(msg), file=sys.stderr, flush=True)


def _stderr_is_tty() -> bool:
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def _progress(msg: str) -> None:
    """Progress chatter goes to stderr only on a terminal, so a failed run's stderr is its one error line."""
    if _stderr_is_tty():
        _say(msg)


def _hinted(fn, hint: str, *args):
    """``fn(*args)``; a ParityError without advice (no ';') gets ``hint`` appended."""
    try:
        return fn(*args)
    except ParityError as exc:
        if ";" in str(exc):
            raise
        raise ParityError(f"{exc}; {hint}") from None


def _dump_root(start: str) -> str | None:
    """The parity dump directory that ``start`` (which need not exist) is, or lies in, if any."""
    from parity.store import CONFIG, MANIFEST, SCHEMA

    cur = os.path.realpath(start)
    while True:
        mpath = os.path.join(cur, MANIFEST)
        if os.path.isfile(mpath):
            try:
                with open(mpath, "rb") as fh:
                    head = fh.read(4096)
            except OSError:
                head = b""
            if SCHEMA.encode() in head or (os.path.isfile(os.path.join(cur, CONFIG))
                                           and os.path.isdir(os.path.join(cur, "states"))):
                return cur
        parent = os.path.dirname(cur)
        if parent == cur:
            return None
        cur = parent


def _check_output(path: str, flag: str, kind: str) -> None:
    """Refuse, before any work, an output that cannot be created or that lies inside a parity dump (dumps are
    never modified in place). ``kind``: "dump" (the path may be an existing dump to replace), "dir" or "file"."""
    full = os.path.abspath(path)
    existing = full
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if existing == full:
        if kind == "file" and os.path.isdir(full):
            raise ParityError(f"{path}: is a directory; pass a file path as {flag}")
        if kind != "file" and not os.path.isdir(full):
            raise ParityError(f"{path}: exists and is not a directory; pass a new directory as {flag}")
    elif not os.path.isdir(existing):
        raise ParityError(f"{path}: cannot be created because {existing} is not a directory; choose another {flag}")
    root = _dump_root(full if kind == "dir" else os.path.dirname(full))
    if root is not None:
        raise ParityError(f"{path}: lies inside the parity dump {root}, and dumps are never modified; choose a "
                          f"{flag} outside it")


def _reference_args(args) -> dict:
    return {"reference": args.reference, "reference_path": args.reference_path,
            "reference_options": args.reference_option}


# ---- commands ------------------------------------------------------------------------------------------------
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


def cmd_dump(args) -> int:
    from parity.dumping import dump_reference
    from parity.families import family_for_config, family_of_case, get_family
    from parity.inputs_io import load_tensor_file

    _check_output(args.out, "--out", "dump")
    pipeline_flags = [f for f in ("steps", "guidance", "prompts", "latent_size", "noise_seed")
                      if getattr(args, f) is not None]
    if args.pipeline and not args.case:
        return _dump_pipeline(args)
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
                                 force=args.force, family=family, progress=_progress, threads=args.threads,
                                 stats_only=args.stats_only, **_reference_args(args))
    else:
        if not (args.config and args.inputs) or (args.weights is None) == (args.seed is None):
            raise ParityError("pass --case NAME, or --config C.json --inputs IN and exactly one of "
                              "--weights W.safetensors / --seed N")
        config = _load_json(args.config, "config")
        family = family_for_config(config, args.family, args.config)
        fam = get_family(family, source=args.config)
        cfg = fam.parse_config(config, source=args.config)
        check_header = getattr(fam, "check_input_header", None)
        inputs = load_tensor_file(args.inputs, "inputs", check=None if check_header is None else (
            lambda header: check_header(cfg, header, source=f"{args.config} (with {args.inputs})")))
        summary = dump_reference(out=args.out, config=config, inputs=inputs, weights_path=args.weights,
                                 seed=args.seed, precision=args.precision, force=args.force, family=family,
                                 config_source=args.config, inputs_source=args.inputs, progress=_progress,
                                 threads=args.threads, stats_only=args.stats_only, **_reference_args(args))
    if summary["nonfinite"]:
        _say(f"warning: reference states with NaN/Inf: {', '.join(summary['nonfinite'][:5])}")
    print(f"wrote {summary['out']} ({summary['probes']} probes, {summary['precision']}, reference "
          f"{summary['reference']})")
    return EXIT_OK


def _dump_pipeline(args) -> int:
    """``parity dump --pipeline``: a denoiser config and weights, prompt embeddings, steps, guidance, latent size
    and a noise seed -> a pipeline dump (parity.families.pipeline)."""
    from parity.dumping import dump_reference
    from parity.families import family_for_config, get_family
    from parity.inputs_io import load_tensor_file
    from parity.pipeline.prompts import pipeline_config, pipeline_inputs

    if args.inputs:
        raise ParityError("--pipeline takes the prompt embeddings as --prompts P.safetensors (and makes the noise "
                          "itself from --noise-seed); drop --inputs")
    if not (args.config and args.prompts and args.latent_size) or (args.weights is None) == (args.seed is None):
        raise ParityError("--pipeline needs --config (the denoiser's config.json), exactly one of --weights W / --seed "
                          "N, --prompts P.safetensors and --latent-size T H W (or --case NAME of 'parity cases "
                          "--family pipeline')")
    _require_file(args.prompts, "prompts file")
    denoiser = _load_json(args.config, "config")
    den_family = family_for_config(denoiser, args.family if args.family != "pipeline" else None, args.config)
    config = pipeline_config(den_family, denoiser, steps=args.steps, guidance=args.guidance, source=args.config)
    prompts = load_tensor_file(args.prompts, "prompts")
    cfg = get_family("pipeline").parse_config(config, source=args.config)
    inputs = pipeline_inputs(cfg, prompts, args.latent_size, args.noise_seed or 0, source=args.prompts)
    summary = dump_reference(out=args.out, config=config, inputs=inputs, weights_path=args.weights, seed=args.seed,
                             precision=args.precision, force=args.force, family="pipeline", config_source=args.config,
                             inputs_source=args.prompts, progress=_progress, threads=args.threads,
                             inputs_seed=args.noise_seed or 0, **_reference_args(args))
    print(f"wrote {summary['out']} (pipeline: {cfg.num_inference_steps} steps, guidance {cfg.guidance_scale:g}, "
          f"{summary['probes']} probes, {summary['precision']}, reference {summary['reference']})")
    return EXIT_OK


def cmd_ingest(args) -> int:
    from parity.dumping import ingest_legacy

    from parity.families import family_for_config

    _check_output(args.out, "--out", "dump")
    config = _load_json(args.config, "config")
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
                       subject=args.subject, subject_path=args.subject_path, progress=_progress)
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
    _check_output(args.dst, "--dst", "file")
    if os.path.exists(args.dst) and os.path.exists(args.src) and os.path.samefile(args.src, args.dst):
        raise ParityError(f"{args.dst}: is the --src file itself; write the converted weights to a new file")
    tensors = load_tensor_file(args.src, "weights")
    if args.config:
        config = _load_json(args.config, "config")
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


def cmd_compare(args) -> int:
    from parity.compare import CompareOptions, compare_dump, first_divergence
    from parity.report import apply_baseline, load_baseline, write_report, write_summary

    from parity.tolerances import load_profiles

    modes = ("isolated", "accumulated") if args.mode == "both" else (args.mode,)
    if args.report:  # checked before any work: a report that cannot be written must not cost a comparison
        _check_output(args.report, "--report", "dir")
        names = [os.path.basename(os.path.normpath(p)) for p in args.dumps]
        if len(set(names)) != len(names):
            raise ParityError(f"{args.report}: several dumps share a directory name ({', '.join(names)}); their "
                              "reports would overwrite each other — compare them in separate runs")
        from parity.report import check_report_dir
        check_report_dir(args.report, names if len(names) > 1 else ())
    if args.against and len(args.dumps) != 1:
        raise ParityError(f"--against {args.against}: a subject dump belongs to one reference dump; pass exactly that "
                          f"one ({len(args.dumps)} given)")
    if args.baseline:
        _require_file(args.baseline, "baseline report", dir_ok=True)
    if args.tolerances:
        _require_file(args.tolerances, "tolerance file")
    baseline = (_hinted(load_baseline, "pass a parity.json written by 'parity compare --report'", args.baseline)
                if args.baseline else None)
    if args.tolerances:
        _hinted(load_profiles, "fix the tolerance file or omit --tolerances", args.tolerances)
    results = []
    for path in args.dumps:
        opts = CompareOptions(modes=modes, device=args.device, precision=args.precision, probes=args.probes,
                              tolerance_file=args.tolerances, subject=args.subject, subject_path=args.subject_path,
                              subject_options=args.subject_option, against=args.against,
                              progress=not args.no_progress and _stderr_is_tty(), shown_metrics=bool(args.report))
        result = compare_dump(path, opts)
        if baseline is not None:
            apply_baseline(result, baseline)
            result["first_divergence"] = first_divergence(result["probes"])
        results.append(result)
        _print_result(result, verbose=args.verbose)
    if args.report:
        hint = "free disk space or choose another --report directory"
        if len(results) == 1:
            _hinted(write_report, hint, results[0], args.report)
        else:
            names = [os.path.basename(os.path.normpath(p)) for p in args.dumps]
            for name, result in zip(names, results):
                _hinted(write_report, hint, result, os.path.join(args.report, name))
            _hinted(write_summary, hint, results, args.report)
        print(f"report written to {args.report}")
    return EXIT_OK if all(r["passed"] for r in results) else EXIT_PARITY_FAILURE


def cmd_run_subject(args) -> int:
    from parity.compare import CompareOptions
    from parity.subject_dump import record_subject

    _check_output(args.out, "--out", "dump")
    modes = ("isolated", "accumulated") if args.mode == "both" else (args.mode,)
    opts = CompareOptions(modes=modes, device=args.device, probes=args.probes, subject=args.subject,
                          subject_path=args.subject_path, subject_options=args.subject_option, progress=False)
    s = record_subject(args.reference_dump, args.out, opts, force=args.force)
    print(f"wrote {s['out']} (subject {s['subject']}, {s['precision']}, {s['device']}, {' + '.join(s['modes'])}; "
          f"{s['not_applicable']} probe(s) not applicable, {s['not_evaluated']} not evaluated); judge it anywhere "
          f"with: parity compare {args.reference_dump} --against {s['out']}")
    return EXIT_OK


def _num(x) -> str:
    return "—" if x is None else f"{x:.3g}"


def _print_result(result: dict, verbose: bool) -> None:
    from parity.metrics import format_cosine
    probes = result["probes"]
    n_pass = sum(p["passed"] for p in probes)
    status = "PASS" if result["passed"] else "FAIL"
    subject = (result.get("subject") or {}).get("plugin", "?")
    print(f"{status} {printable(result['case'], 200)} {result['precision']} ({printable(subject, 80)}, "
          f"{result['subject_precision']}, {result['device']}, {result['mode']}): {n_pass}/{len(probes)} probes "
          f"within tolerance, {result['duration_s']:.1f} s")
    fd = result["first_divergence"]
    if fd:
        print(f"first divergence: {fd['probe']} ({fd['mode']}) — reference {fd.get('reference_path', '?')} / "
              f"subject {fd.get('subject_path', '?')}")
    if result.get("steps"):
        from parity.report.steps import first_failing_lines
        for line in first_failing_lines(result["steps"]):
            print(line)
    w = max([len(p["name"]) for p in probes] + [5])
    print(f"  {'probe':<{w}} {'mode':<11} {'max abs':>9} {'mean abs':>9} {'cosine':>10} {'atol':>8} {'rtol':>8}  ok")
    for p in probes:
        cos = format_cosine(p["cosine"])
        print(f"  {p['name']:<{w}} {p['mode']:<11} {_num(p['max_abs']):>9} {_num(p['mean_abs']):>9} {cos:>10} "
              f"{_num(p['atol']):>8} {_num(p['rtol']):>8}  {'ok' if p['passed'] else 'FAIL'}")
    for p in result.get("not_evaluated", []):
        print(f"  {p['name']:<{w}} {p['mode']:<11} not evaluated: {p['why']}")
    for p in result.get("not_applicable", []):
        print(f"  {p['name']:<{w}} {'—':<11} not applicable: {p['why']}")
    for note in result.get("notes", []):
        print(f"note: {note}")
    failing = [p for p in probes if not p["passed"]]
    for p in failing[: (len(failing) if verbose else 3)]:
        print()
        print(p["message"])


def cmd_report(args) -> int:
    from parity.report import rerender

    root = _dump_root(args.report_dir)
    if root is not None:
        raise ParityError(f"{args.report_dir}: lies inside the parity dump {root}; pass a report directory written "
                          "by 'parity compare --report DIR'")
    paths = _hinted(rerender, f"re-create it with 'parity compare DUMP --report {args.report_dir}'", args.report_dir)
    print(f"re-rendered {len(paths)} file(s) in {args.report_dir}")
    return EXIT_OK


def _family_problems(dump, problems: list[str]) -> list[str]:
    """What only the model family can tell about a dump whose manifest is usable: the family name, config values,
    model inputs, state shapes, weight names/shapes against the config, NaN/Inf weights. Files already listed
    as broken are skipped."""
    from parity.families import get_family
    from parity.weights import nonfinite_weights, shape_problems

    if any(p.startswith((dump.manifest_path, f"{dump.path}:")) for p in problems):
        return []  # the manifest itself is unusable: nothing to check against
    try:
        fam = get_family(dump.family, source=dump.manifest_path)
        cfg = fam.parse_config(dump.config, source=os.path.join(dump.path, "config.json"))
    except ParityError as exc:
        return [str(exc)]
    found = []
    try:
        header = dump.weights_header()
        wpath = dump.weights_path()
    except ParityError:
        header = None  # no usable weights: listed already
    if header is not None:
        try:
            bad = shape_problems({k: s for k, (_, s) in header.items()}, fam.expected_state_dict_shapes(cfg))
            if bad:
                found.append(f"{wpath}: weights do not match the config in manifest.json — {'; '.join(bad)}; "
                             "re-create the dump from the config that belongs to these weights")
            else:
                floats = [k for k, (dt, _) in header.items() if dt.startswith(("float", "bfloat"))]
                nonfinite = nonfinite_weights(dump.load_weights(floats, mmap=True) if floats else {})
                if nonfinite:
                    found.append(f"{wpath}: reference problem: {len(nonfinite)} weight(s) contain NaN/Inf "
                                 f"({', '.join(nonfinite[:5])}); re-create the dump from a healthy checkpoint")
        except ParityError as exc:
            found.append(str(exc))
    inputs = None
    try:
        inputs = fam.normalize_inputs(dump.inputs(), cfg, source=os.path.join(dump.path, "inputs"))
    except ParityError as exc:
        if "inputs/" not in " ".join(problems):  # a broken input file is listed already
            found.append(str(exc))
    if inputs is not None and hasattr(fam, "probe_shapes"):
        expected = fam.probe_shapes(cfg, inputs)
        wrong = [f"{e['name']} {tuple(e['shape'])} (expected {tuple(expected[e['name']])})"
                 for e in dump._files.values()
                 if e["role"] != "input" and e["name"] in expected and tuple(e["shape"]) != tuple(expected[e["name"]])]
        if wrong:
            found.append(f"{dump.manifest_path}: {len(wrong)} state(s) do not have the shapes the config and inputs "
                         f"imply: {', '.join(wrong[:3])}{', ...' if len(wrong) > 3 else ''}; re-create the dump "
                         "with 'parity dump'")
    return found


def cmd_verify(args) -> int:
    from parity.store import inspect_dump

    bad = []  # (dump, its problems)
    for path in args.dumps:
        dump, problems = inspect_dump(path)
        if dump is not None:
            try:
                problems += _family_problems(dump, problems)
            finally:
                dump.close()
        if problems:
            bad.append((path, problems))
            print(printable(f"{path}: {len(problems)} problem(s)"))
            for p in problems:
                print(f"  - {printable(p)}")
        else:
            print(printable(f"{path}: OK"))
    if bad:  # one stderr line: the first problem, and how many more are listed on stdout
        path, problems = bad[0]
        more = f"{path}: {len(problems)} problem(s) in all" + (f", {len(bad) - 1} more dump(s) with problems"
                                                               if len(bad) > 1 else "")
        raise ParityError(f"{problems[0]} [{more}, every one listed on stdout]")
    return EXIT_OK


# ---- parser ---------------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr (exit 2), like every other bad input."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {' '.join(str(message).split())}; see '{self.prog} "
                                  f"--help'\n")


def _plugin_args(s, side: str) -> None:
    default = "torch-reference" if side == "reference" else "ms_impl"
    s.add_argument(f"--{side}", metavar="NAME|module:attr",
                   help=f"the {side} plug-in: a registered name ('parity plugins') or module:attr (default {default})")
    s.add_argument(f"--{side}-path", metavar="DIR",
                   help=f"a checkout holding the {side}'s code (put on sys.path; recorded with its git commit)")
    s.add_argument(f"--{side}-option", metavar="KEY=VALUE", action="append",
                   help=f"an option of the {side} plug-in (repeatable; 'parity plugins' lists them)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="parity", description="PyTorch -> MindSpore numerical parity harness for video diffusion "
                                "transformers (reference and subject are plug-ins).")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    p.add_argument("--family", default=None, help="the model family (default: from the dump, the case or the config; "
                   "'parity cases' lists them)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("cases", help="list the built-in cases")
    s.set_defaults(func=cmd_cases)

    s = sub.add_parser("plugins", help="list the registered reference and subject plug-ins")
    s.set_defaults(func=cmd_plugins)

    s = sub.add_parser("dump", help="run the reference with capture and write a reference dump")
    s.add_argument("--case", help="a built-in case (see 'parity cases')")
    s.add_argument("--config", help="upstream config.json")
    s.add_argument("--weights", help="upstream .safetensors state dict")
    s.add_argument("--seed", type=int, help="random weights with this seed instead of --weights")
    s.add_argument("--inputs", help="inputs .safetensors or .npz (hidden_states, timestep, encoder_hidden_states, "
                                    "attention_mask, encoder_attention_mask)")
    s.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    s.add_argument("--out", required=True, help="dump directory to create")
    s.add_argument("--force", action="store_true", help="replace an existing dump")
    s.add_argument("--threads", type=_threads, default=1,
                   help="torch intra-op threads (default 1: CPU reductions depend on it, so dumps reproduce exactly)")
    s.add_argument("--stats-only", action="store_true",
                   help="store per-probe statistics, sha256 and a sample of values instead of the tensors (very "
                        "large runs; 'parity compare' then applies the weaker stats criterion)")
    g = s.add_argument_group("pipeline dumps (docs/pipeline.md)")
    g.add_argument("--pipeline", action="store_true",
                   help="dump the CFG sampling loop step by step around the denoiser of --config (or a pipeline --case)")
    g.add_argument("--steps", type=int, help="denoising steps (default 10)")
    g.add_argument("--guidance", type=float, help="classifier-free guidance scale (default 7.5)")
    g.add_argument("--prompts", metavar="P.safetensors",
                   help="prompt embeddings: prompt_embeds, prompt_attention_mask, negative_prompt_embeds, "
                        "negative_prompt_attention_mask ((B, L, D) and (B, L))")
    g.add_argument("--latent-size", type=int, nargs=3, metavar=("T", "H", "W"), help="latent frames, height, width")
    g.add_argument("--noise-seed", type=int, help="seed of the recorded initial latents and ancestral draws (default 0)")
    _plugin_args(s, "reference")
    s.set_defaults(func=cmd_dump)

    s = sub.add_parser("ingest", help="turn a folder of hand-dumped <probe>.npy files, or an msprobe dump, into a "
                                      "dump")
    s.add_argument("legacy_dir", metavar="DIR")
    s.add_argument("--from", dest="source", choices=("legacy", "msprobe"), default="legacy",
                   help="legacy: a folder of <probe>.npy; msprobe: an msprobe dump_path (step*/rank*|proc*/dump.json)")
    s.add_argument("--config", required=True)
    s.add_argument("--weights", required=True)
    s.add_argument("--precision", choices=("fp32", "bf16", "fp16"),
                   help="precision of the hand dump (default: fp16 if any file is float16, else fp32)")
    s.add_argument("--out", required=True)
    s.add_argument("--force", action="store_true")
    s.add_argument("--subject", metavar="NAME|module:attr",
                   help="--from msprobe, a MindSpore dump: the subject plug-in whose overlay maps it (default ms_impl)")
    s.add_argument("--subject-path", metavar="DIR", help="a checkout holding that plug-in's code")
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("convert", help="convert a torch state dict to MindSpore names (strict) or back")
    s.add_argument("--src", required=True)
    s.add_argument("--dst", required=True)
    s.add_argument("--config", help="config.json to check shapes against (default: inferred from the weights)")
    s.add_argument("--to", choices=("ms", "torch"), default="ms",
                   help="ms: the subject plug-in's names (default); torch: back to the reference's names")
    s.add_argument("--force", action="store_true")
    s.add_argument("--subject", metavar="NAME|module:attr", help="the plug-in whose names to convert to (default "
                   "ms_impl)")
    s.add_argument("--subject-path", metavar="DIR", help="checkout holding the plug-in's code")
    s.set_defaults(func=cmd_convert)

    s = sub.add_parser("compare", help="compare a subject model against reference dump(s)")
    s.add_argument("dumps", nargs="+", metavar="DUMP")
    s.add_argument("--mode", choices=MODE_CHOICES, default="both")
    s.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="expected dump precision (checked)")
    s.add_argument("--device", choices=("CPU", "GPU", "Ascend"), default="CPU")
    _plugin_args(s, "subject")
    s.add_argument("--report", metavar="DIR", help="write parity.json / parity.md / parity.png here")
    s.add_argument("--baseline", metavar="FILE", help="a previous parity.json: fail probes whose error grew > 2x")
    s.add_argument("--probes", nargs="+", metavar="GLOB", help="only probes matching these globs")
    s.add_argument("--tolerances", metavar="FILE", help="tolerance profile file (default: the family's own, parity/families/<family>/tolerances.json)")
    s.add_argument("--verbose", action="store_true", help="print the message of every failing probe")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--against", metavar="SUBJECT_DUMP",
                   help="judge a subject dump made by 'parity run-subject' (no subject is run; no framework needed)")
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser("run-subject", help="run the subject on a reference dump's inputs and write its probes as a "
                                           "subject dump (to compare elsewhere with 'parity compare --against')")
    s.add_argument("reference_dump", metavar="REF_DUMP")
    s.add_argument("--out", required=True, help="subject dump directory to create")
    s.add_argument("--mode", choices=MODE_CHOICES, default="both")
    s.add_argument("--device", choices=("CPU", "GPU", "Ascend"), default="CPU")
    s.add_argument("--probes", nargs="+", metavar="GLOB", help="only probes matching these globs")
    s.add_argument("--force", action="store_true", help="replace an existing subject dump")
    _plugin_args(s, "subject")
    s.set_defaults(func=cmd_run_subject)

    s = sub.add_parser("report", help="re-render parity.md / parity.png from parity.json")
    s.add_argument("report_dir")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("verify", help="check a dump's manifest, files, checksums and shapes")
    s.add_argument("dumps", nargs="+", metavar="DUMP")
    s.set_defaults(func=cmd_verify)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("dump", "compare", "run-subject"):  # the commands that run models, possibly at real sizes
        return_large_blocks_to_os()
    try:
        return args.func(args)
    except ParityError as exc:
        if args.debug:
            traceback.print_exc()
        _say(f"parity {args.command}: error: {exc}")
        return exc.exit_code
    except BrokenPipeError:  # output piped into head & co. (before OSError, of which it is a subclass)
        sys.stdout = open(os.devnull, "w")
        return EXIT_OK
    except OSError as exc:
        if args.debug:
            traceback.print_exc()
        full = exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
        hint = "free some disk space and retry" if full else "check the path and permissions"
        where = f"{exc.filename}: " if exc.filename else ""
        _say(f"parity {args.command}: error: {where}{' '.join(str(exc.strerror or exc).split())}; {hint}")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _say(f"parity {args.command}: interrupted; nothing half-written was left in place")
        return 130
    except MemoryError:
        _say(f"parity {args.command}: error: out of memory; try --probes to compare fewer probes")
        return EXIT_BAD_INPUT
    except Exception as exc:  # an input we did not anticipate: still one line, never a traceback
        if args.debug:
            traceback.print_exc()
        _say(f"parity {args.command}: error: unexpected {exc.__class__.__name__}: {' '.join(str(exc).split())[:200]}"
             f"; rerun with --debug for the traceback and report it")
        return EXIT_BAD_INPUT
