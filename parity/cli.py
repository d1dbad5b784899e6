"""``parity`` command line: dump, ingest, cases, convert, compare, report, verify.

Exit codes: 0 success (compare: every probe passed), 1 parity failure (compare), 2 bad input. Bad input is
one line on stderr and no traceback (``--debug`` shows it).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import stat
import sys
import traceback

from parity.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_PARITY_FAILURE, ParityError
from parity.heap import return_large_blocks_to_os

MODE_CHOICES = ("isolated", "accumulated", "both")


_MAX_JSON_BYTES = 64 * 2**20


def _require_file(path: str, what: str, dir_ok: bool = False) -> None:
    """A FIFO or device given as an input file would block or never end: refuse it up front."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # the reader reports missing/unreadable files itself
    if not (stat.S_ISREG(mode) or (dir_ok and stat.S_ISDIR(mode))):
        raise ParityError(f"{path}: {what} is not a regular file; pass the {what} file itself")


def _load_json(path: str, what: str) -> dict:
    _require_file(path, what)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(_MAX_JSON_BYTES + 1)
        if len(raw) > _MAX_JSON_BYTES:
            raise ParityError(f"{path}: {what} is larger than {_MAX_JSON_BYTES >> 20} MiB; pass the model's own "
                              f"{what}.json")
        return json.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise ParityError(f"{path}: {what} not found; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ParityError(f"{path}: cannot read {what} ({exc.__class__.__name__}); check the file and its "
                          "permissions") from None
    except (ValueError, RecursionError) as exc:
        raise ParityError(f"{path}: {what} is not valid JSON ({' '.join(str(exc).split())[:100]}); fix it or pass "
                          f"the model's own {what}.json") from None


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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


def _check_device(device: str) -> None:
    """Refuse an accelerator that is not there before the subject framework's own checks print their
    multi-line diagnostics (a CPU-only machine asked for --device GPU/Ascend)."""
    import ctypes.util

    if device == "GPU" and ctypes.util.find_library("cuda") is None:
        raise ParityError("--device GPU: no CUDA driver (libcuda) on this machine; run on a machine with an NVIDIA "
                          "GPU and MindSpore's GPU setup, or use --device CPU")
    if device == "Ascend" and not (ctypes.util.find_library("ascendcl") or os.environ.get("ASCEND_HOME_PATH")
                                   or os.path.isdir("/usr/local/Ascend")):
        raise ParityError("--device Ascend: no Ascend CANN toolkit here (no libascendcl, ASCEND_HOME_PATH unset); run "
                          "on an Ascend machine with CANN set up, or use --device CPU")


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
    _check_output(args.out, "--out", "dump")
    if args.case:
        if args.config or args.inputs or args.weights:
            raise ParityError("--case builds config, weights and inputs itself; drop --config/--weights/--inputs")
        case = fam.builtin_cases().get(args.case)
        if case is None:
            raise ParityError(f"unknown case {args.case!r}; pick one of: {', '.join(fam.builtin_cases())} "
                              "(see 'parity cases')")
        seed = case.weights_seed if args.seed is None else args.seed
        summary = dump_reference(out=args.out, config=case.config, inputs=case.make_inputs(), seed=seed,
                                 precision=args.precision, case=case.name, inputs_seed=case.inputs_seed,
                                 force=args.force, family=args.family, progress=_progress, threads=args.threads,
                                 stats_only=args.stats_only)
    else:
        if not (args.config and args.inputs) or (args.weights is None) == (args.seed is None):
            raise ParityError("pass --case NAME, or --config C.json --inputs IN and exactly one of "
                              "--weights W.safetensors / --seed N")
        config = _load_json(args.config, "config")
        inputs = load_tensor_file(args.inputs, "inputs")
        summary = dump_reference(out=args.out, config=config, inputs=inputs, weights_path=args.weights,
                                 seed=args.seed, precision=args.precision, force=args.force, family=args.family,
                                 config_source=args.config, inputs_source=args.inputs, progress=_progress,
                                 threads=args.threads, stats_only=args.stats_only)
    if summary["nonfinite"]:
        _say(f"warning: reference states with NaN/Inf: {', '.join(summary['nonfinite'][:5])}")
    print(f"wrote {summary['out']} ({summary['probes']} probes, {summary['precision']})")
    return EXIT_OK


def cmd_ingest(args) -> int:
    from parity.dumping import ingest_legacy

    _check_output(args.out, "--out", "dump")
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

    from parity.weights import check_state_dict

    if os.path.lexists(args.dst) and not args.force:
        raise ParityError(f"{args.dst}: exists; pass --force to overwrite")
    _check_output(args.dst, "--dst", "file")
    if os.path.exists(args.dst) and os.path.exists(args.src) and os.path.samefile(args.src, args.dst):
        raise ParityError(f"{args.dst}: is the --src file itself; write the converted weights to a new file")
    fam = get_family(args.family)
    tensors = load_tensor_file(args.src, "weights")
    if args.config:
        cfg = fam.parse_config(_load_json(args.config, "config"), source=args.config)
    else:
        from parity.families.opensora_v13.statedict import infer_config
        cfg = fam.parse_config(infer_config({k: v.shape for k, v in tensors.items()}, source=args.src),
                               source=f"{args.src} (config inferred from the weights; pass --config)")
    check_state_dict(tensors, fam.expected_state_dict_shapes(cfg), source=args.src)
    config = cfg.to_dict()
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

    from parity.tolerances import load_profiles

    modes = ("isolated", "accumulated") if args.mode == "both" else (args.mode,)
    _check_device(args.device)
    if args.report:  # checked before any work: a report that cannot be written must not cost a comparison
        _check_output(args.report, "--report", "dir")
        names = [os.path.basename(os.path.normpath(p)) for p in args.dumps]
        if len(set(names)) != len(names):
            raise ParityError(f"{args.report}: several dumps share a directory name ({', '.join(names)}); their "
                              "reports would overwrite each other — compare them in separate runs")
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
                              tolerance_file=args.tolerances, attention_backend=args.attention,
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


def _num(x) -> str:
    return "—" if x is None else f"{x:.3g}"


def _print_result(result: dict, verbose: bool) -> None:
    from parity.metrics import format_cosine
    probes = result["probes"]
    n_pass = sum(p["passed"] for p in probes)
    status = "PASS" if result["passed"] else "FAIL"
    print(f"{status} {result['case']} {result['precision']} ({result['subject_precision']}, {result['device']}, "
          f"{result['mode']}): {n_pass}/{len(probes)} probes within tolerance, {result['duration_s']:.1f} s")
    fd = result["first_divergence"]
    if fd:
        print(f"first divergence: {fd['probe']} ({fd['mode']}) — torch {fd['torch_path']} / ms {fd['ms_path']}")
    w = max([len(p["name"]) for p in probes] + [5])
    print(f"  {'probe':<{w}} {'mode':<11} {'max abs':>9} {'mean abs':>9} {'cosine':>10} {'atol':>8} {'rtol':>8}  ok")
    for p in probes:
        cos = format_cosine(p["cosine"])
        print(f"  {p['name']:<{w}} {p['mode']:<11} {_num(p['max_abs']):>9} {_num(p['mean_abs']):>9} {cos:>10} "
              f"{_num(p['atol']):>8} {_num(p['rtol']):>8}  {'ok' if p['passed'] else 'FAIL'}")
    for p in result.get("not_evaluated", []):
        print(f"  {p['name']:<{w}} {p['mode']:<11} not evaluated: {p['why']}")
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


def _family_problems(path: str, problems: list[str]) -> list[str]:
    """What only the model family can tell about a dump whose manifest is usable: config values, model inputs,
    weight names/shapes against the config, NaN/Inf weights. Files already listed as broken are skipped."""
    from parity import store
    from parity.safetensors_io import load_safetensors, read_safetensors_header
    from parity.weights import nonfinite_weights, shape_problems
    from parity.families import get_family

    mpath = os.path.join(path, store.MANIFEST)
    if any(p.startswith((mpath, f"{path}:")) for p in problems):
        return []  # the manifest itself is unusable: nothing to check against
    try:  # the store's lenient pass: only the entries that passed the field checks
        man, _, files, _ = store._inspect(path, hashes=False, finite=False, weights_hash=False)
        dump = store.Dump(path, man, files)
        fam = get_family(dump.family)
    except (ParityError, KeyError, TypeError, ValueError):
        return []
    try:
        cfg = fam.parse_config(dump.config, source=os.path.join(path, store.CONFIG))
    except ParityError as exc:
        return [str(exc)]
    found = []
    try:
        inputs = dump.inputs()
    except ParityError:
        inputs = None  # a broken input file is listed already
    if inputs is not None:
        try:
            fam.normalize_inputs(inputs, cfg, source=os.path.join(path, "inputs"))
        except ParityError as exc:
            found.append(str(exc))
    w = man.get("weights")
    wpath = store._weights_location(path, w) if isinstance(w, dict) and isinstance(w.get("path"), str) else None
    if wpath and not any(p.startswith(wpath) for p in problems):
        try:
            header = read_safetensors_header(wpath)
            bad = shape_problems({k: s for k, (_, s) in header.items()}, fam.expected_state_dict_shapes(cfg))
            if bad:
                found.append(f"{wpath}: weights do not match the config in manifest.json — {'; '.join(bad)}; "
                             "re-create the dump from the config that belongs to these weights")
            else:
                floats = [k for k, (dt, _) in header.items() if dt.startswith(("float", "bfloat"))]
                nonfinite = [k for k in floats if nonfinite_weights(load_safetensors(wpath, [k], mmap=True))]
                if nonfinite:
                    found.append(f"{wpath}: reference problem: {len(nonfinite)} weight(s) contain NaN/Inf "
                                 f"({', '.join(nonfinite[:5])}); re-create the dump from a healthy checkpoint")
        except ParityError as exc:
            found.append(str(exc))
    return found


def cmd_verify(args) -> int:
    from parity.store import verify_dump

    bad = []  # (dump, its problems)
    for path in args.dumps:
        problems = verify_dump(path)
        problems += _family_problems(path, problems)
        if problems:
            bad.append((path, problems))
            print(f"{path}: {len(problems)} problem(s)")
            for p in problems:
                print(f"  - {p}")
        else:
            print(f"{path}: OK")
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


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="parity", description="PyTorch -> MindSpore numerical parity harness "
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
    s.add_argument("--stats-only", action="store_true",
                   help="store per-probe statistics, sha256 and a sample of values instead of the tensors (very "
                        "large runs; 'parity compare' then applies the weaker stats criterion)")
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
    if args.command in ("dump", "compare"):  # the commands that run models, possibly at real sizes
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
