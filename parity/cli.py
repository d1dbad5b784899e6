"""``parity`` command line: dump, ingest, cases, convert, compare, report, verify.

Exit codes: 0 success (compare: every probe passed), 1 parity failure (compare), 2 bad input. Bad input is
one line on stderr and no traceback (``--debug`` shows it).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import traceback

from parity.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_PARITY_FAILURE, ParityError

MODE_CHOICES = ("isolated", "accumulated", "both")


def _load_json(path: str, what: str) -> dict:
    try:
        with open(path, "r", encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise ParityError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ParityError(f"{path}: cannot read {what} ({exc.__class__.__name__})") from None
    except ValueError as exc:
        raise ParityError(f"{path}: {what} is not valid JSON ({' '.join(str(exc).split())[:100]})") from None


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- commands ------------------------------------------------------------------------------------------------
def cmd_cases(args) -> int:
    from parity.families import get_family

    fam = get_family(args.family)
    print(f"{'case':<14} {'layers':>6} {'D':>4}  description")
    for case in fam.builtin_cases().values():
        cfg = fam.parse_config(case.config)
        marker = " (default)" if case.name == fam.default_case_name() else ""
        print(f"{case.name:<14} {cfg.num_layers:>6} {cfg.hidden_size:>4}  {case.description}{marker}")
    return EXIT_OK


def cmd_dump(args) -> int:
    from parity.dumping import dump_reference
    from parity.families import get_family
    from parity.inputs_io import load_tensor_file

    fam = get_family(args.family)
    if args.case:
        if args.config or args.inputs or args.weights:
            raise ParityError("--case builds config, weights and inputs itself; drop --config/--weights/--inputs")
        case = fam.builtin_cases().get(args.case)
        if case is None:
            raise ParityError(f"unknown case {args.case!r}; built-in cases: {', '.join(fam.builtin_cases())} (parity cases)")
        seed = case.weights_seed if args.seed is None else args.seed
        summary = dump_reference(out=args.out, config=case.config, inputs=case.make_inputs(), seed=seed,
                                 precision=args.precision, case=case.name, inputs_seed=case.inputs_seed,
                                 force=args.force, family=args.family, progress=_say, threads=args.threads)
    else:
        if not (args.config and args.inputs) or (args.weights is None) == (args.seed is None):
            raise ParityError("parity dump needs --case NAME, or --config C.json --inputs IN and exactly one of "
                              "--weights W.safetensors / --seed N")
        config = _load_json(args.config, "config")
        inputs = load_tensor_file(args.inputs, "inputs")
        summary = dump_reference(out=args.out, config=config, inputs=inputs, weights_path=args.weights,
                                 seed=args.seed, precision=args.precision, force=args.force, family=args.family,
                                 config_source=args.config, inputs_source=args.inputs, progress=_say,
                                 threads=args.threads)
    if summary["nonfinite"]:
        _say(f"warning: reference states with NaN/Inf: {', '.join(summary['nonfinite'][:5])}")
    print(f"wrote {summary['out']} ({summary['probes']} probes, {summary['precision']})")
    return EXIT_OK


def cmd_ingest(args) -> int:
    from parity.dumping import ingest_legacy

    config = _load_json(args.config, "config")
    s = ingest_legacy(args.legacy_dir, out=args.out, config=config, weights_path=args.weights,
                      precision=args.precision, force=args.force, family=args.family, config_source=args.config)
    print(f"found {len(s['found'])} probes: {', '.join(s['found'])}")
    print(f"missing {len(s['missing'])} probes" + (f": {', '.join(s['missing'])}" if s["missing"] else ""))
    if s["ignored"]:
        print(f"ignored {len(s['ignored'])} unknown files: {', '.join(s['ignored'])}")
    print(f"wrote {s['out']} ({s['precision']})")
    return EXIT_OK


def cmd_convert(args) -> int:
    from parity.families import get_family
    from parity.inputs_io import load_tensor_file
    from parity.probemap import load_probe_map
    from parity.safetensors_io import load_safetensors_dtypes, save_safetensors

    if os.path.exists(args.dst) and not args.force:
        raise ParityError(f"{args.dst}: exists; pass --force to overwrite")
    fam = get_family(args.family)
    tensors = load_tensor_file(args.src, "weights")
    if args.config:
        config = fam.parse_config(_load_json(args.config, "config"), source=args.config).to_dict()
    else:
        from parity.families.opensora_v13.statedict import infer_config
        config = infer_config({k: v.shape for k, v in tensors.items()}, source=args.src)
    subject = load_probe_map(args.family).harness("subject")
    convert = subject.convert_ms_to_torch if args.to == "torch" else subject.convert_torch_to_ms
    out = convert(tensors, config)
    dtypes = load_safetensors_dtypes(args.src) if args.src.endswith(".safetensors") else None
    save_safetensors(args.dst, out, dtypes={k: dtypes[k] for k in out if k in dtypes} if dtypes else None)
    print(f"wrote {args.dst} ({len(out)} tensors, {args.to} names)")
    return EXIT_OK


def cmd_compare(args) -> int:
    from parity.compare import CompareOptions, compare_dump, first_divergence
    from parity.report import apply_baseline, load_baseline, write_report, write_summary

    modes = ("isolated", "accumulated") if args.mode == "both" else (args.mode,)
    baseline = load_baseline(args.baseline) if args.baseline else None
    results = []
    for path in args.dumps:
        opts = CompareOptions(modes=modes, device=args.device, precision=args.precision, probes=args.probes,
                              tolerance_file=args.tolerances, attention_backend=args.attention,
                              progress=not args.no_progress)
        result = compare_dump(path, opts)
        if baseline is not None:
            apply_baseline(result, baseline)
            result["first_divergence"] = first_divergence(result["probes"])
        results.append(result)
        _print_result(result, verbose=args.verbose)
    if args.report:
        if len(results) == 1:
            write_report(results[0], args.report)
        else:
            names = [os.path.basename(os.path.normpath(p)) for p in args.dumps]
            if len(set(names)) != len(names):
                raise ParityError("several dumps share a directory name; reports would overwrite each other")
            for name, result in zip(names, results):
                write_report(result, os.path.join(args.report, name))
            write_summary(results, args.report)
        print(f"report written to {args.report}")
    return EXIT_OK if all(r["passed"] for r in results) else EXIT_PARITY_FAILURE


def _num(x) -> str:
    return "—" if x is None else f"{x:.3g}"


def _print_result(result: dict, verbose: bool) -> None:
    probes = result["probes"]
    n_pass = sum(p["passed"] for p in probes)
    status = "PASS" if result["passed"] else "FAIL"
    print(f"{status} {result['case']} {result['precision']} ({result['subject_precision']}, {result['device']}, "
          f"{result['mode']}): {n_pass}/{len(probes)} probes within tolerance, {result['duration_s']:.1f} s")
    fd = result["first_divergence"]
    if fd:
        print(f"first divergence: {fd['probe']} ({fd['mode']}) — torch {fd['torch_path']} / ms {fd['ms_path']}")
    print(f"  {'probe':<44} {'mode':<11} {'max abs':>9} {'mean abs':>9} {'cosine':>10} {'atol':>8} {'rtol':>8}  ok")
    for p in probes:
        cos = "—" if p["cosine"] is None else f"{p['cosine']:.7f}"
        print(f"  {p['name']:<44} {p['mode']:<11} {_num(p['max_abs']):>9} {_num(p['mean_abs']):>9} {cos:>10} "
              f"{_num(p['atol']):>8} {_num(p['rtol']):>8}  {'ok' if p['passed'] else 'FAIL'}")
    for p in result.get("not_evaluated", []):
        print(f"  {p['name']:<44} {p['mode']:<11} not evaluated: {p['why']}")
    failing = [p for p in probes if not p["passed"]]
    for p in failing[: (len(failing) if verbose else 3)]:
        print()
        print(p["message"])


def cmd_report(args) -> int:
    from parity.report import rerender

    paths = rerender(args.report_dir)
    print(f"re-rendered {len(paths)} file(s) in {args.report_dir}")
    return EXIT_OK


def cmd_verify(args) -> int:
    from parity.store import verify_dump

    worst = EXIT_OK
    for path in args.dumps:
        problems = verify_dump(path)
        if problems:
            worst = EXIT_BAD_INPUT
            print(f"{path}: {len(problems)} problem(s)")
            for p in problems:
                print(f"  - {p}")
        else:
            print(f"{path}: OK")
    return worst


# ---- parser ---------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="parity", description="PyTorch -> MindSpore numerical parity harness "
                                "(Open-Sora-Plan v1.3 OpenSoraT2V).")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    p.add_argument("--family", default="opensora_v13", help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("cases", help="list the built-in cases")
    s.set_defaults(func=cmd_cases)

    s = sub.add_parser("dump", help="run the torch reference with capture and write a reference dump")
    s.add_argument("--case", help="a built-in case (see 'parity cases')")
    s.add_argument("--config", help="upstream config.json")
    s.add_argument("--weights", help="upstream .safetensors state dict")
    s.add_argument("--seed", type=int, help="random weights with this seed instead of --weights")
    s.add_argument("--inputs", help="inputs .safetensors or .npz (hidden_states, timestep, encoder_hidden_states, "
                                    "attention_mask, encoder_attention_mask)")
    s.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    s.add_argument("--out", required=True, help="dump directory to create")
    s.add_argument("--force", action="store_true", help="replace an existing dump")
    s.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: CPU reductions depend on it, so dumps reproduce exactly)")
    s.set_defaults(func=cmd_dump)

    s = sub.add_parser("ingest", help="turn a folder of hand-dumped <probe>.npy files into a dump")
    s.add_argument("legacy_dir")
    s.add_argument("--config", required=True)
    s.add_argument("--weights", required=True)
    s.add_argument("--precision", choices=("fp32", "bf16", "fp16"),
                   help="precision of the hand dump (default: fp16 if any file is float16, else fp32)")
    s.add_argument("--out", required=True)
    s.add_argument("--force", action="store_true")
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("convert", help="convert a torch state dict to MindSpore names (strict) or back")
    s.add_argument("--src", required=True)
    s.add_argument("--dst", required=True)
    s.add_argument("--config", help="config.json to check shapes against (default: inferred from the weights)")
    s.add_argument("--to", choices=("ms", "torch"), default="ms")
    s.add_argument("--force", action="store_true")
    s.set_defaults(func=cmd_convert)

    s = sub.add_parser("compare", help="compare the MindSpore model against reference dump(s)")
    s.add_argument("dumps", nargs="+", metavar="DUMP")
    s.add_argument("--mode", choices=MODE_CHOICES, default="both")
    s.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="expected dump precision (checked)")
    s.add_argument("--device", choices=("CPU", "GPU", "Ascend"), default="CPU")
    s.add_argument("--attention", choices=("portable", "ascend", "ascend-emulated"),
                   help="attention backend of the subject (default: by device)")
    s.add_argument("--report", metavar="DIR", help="write parity.json / parity.md / parity.png here")
    s.add_argument("--baseline", metavar="FILE", help="a previous parity.json: fail probes whose error grew > 2x")
    s.add_argument("--probes", nargs="+", metavar="GLOB", help="only probes matching these globs")
    s.add_argument("--tolerances", metavar="FILE", help="tolerance profile file (default: parity/tolerances.json)")
    s.add_argument("--verbose", action="store_true", help="print the message of every failing probe")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_compare)

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
    try:
        return args.func(args)
    except ParityError as exc:
        if args.debug:
            traceback.print_exc()
        _say(f"parity {args.command}: error: {exc}")
        return exc.exit_code
    except OSError as exc:
        if args.debug:
            traceback.print_exc()
        hint = "free some disk space and retry" if exc.errno == errno.ENOSPC else "check the path and permissions"
        where = exc.filename or ""
        _say(f"parity {args.command}: error: {where}: {exc.strerror or exc}; {hint}")
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # output piped into head & co.
        sys.stdout = open(os.devnull, "w")
        return EXIT_OK
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
