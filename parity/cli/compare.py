"""The subject side's commands: ``compare`` (in process or ``--against`` a subject dump), ``run-subject``, ``report``."""

from __future__ import annotations

import os

from parity.errors import EXIT_OK, EXIT_PARITY_FAILURE, ParityError, printable
from parity.cli.common import check_output, dump_root, hinted, require_file, stderr_is_tty


def cmd_compare(args) -> int:
    from parity.compare import CompareOptions, compare_dump, first_divergence
    from parity.report import apply_baseline, load_baseline, write_report, write_summary

    from parity.tolerances import load_profiles

    modes = ("isolated", "accumulated") if args.mode == "both" else (args.mode,)
    if args.report:  # checked before any work: a report that cannot be written must not cost a comparison
        check_output(args.report, "--report", "dir")
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
        require_file(args.baseline, "baseline report", dir_ok=True)
    if args.tolerances:
        require_file(args.tolerances, "tolerance file")
    baseline = (hinted(load_baseline, "pass a parity.json written by 'parity compare --report'", args.baseline)
                if args.baseline else None)
    if args.tolerances:
        hinted(load_profiles, "fix the tolerance file or omit --tolerances", args.tolerances)
    results = []
    for path in args.dumps:
        opts = CompareOptions(modes=modes, device=args.device, precision=args.precision, probes=args.probes,
                              tolerance_file=args.tolerances, subject=args.subject, subject_path=args.subject_path,
                              subject_options=args.subject_option, against=args.against,
                              progress=not args.no_progress and stderr_is_tty(), shown_metrics=bool(args.report))
        result = compare_dump(path, opts)
        if baseline is not None:
            apply_baseline(result, baseline)
            result["first_divergence"] = first_divergence(result["probes"])
        results.append(result)
        _print_result(result, verbose=args.verbose)
    if args.report:
        hint = "free disk space or choose another --report directory"
        if len(results) == 1:
            hinted(write_report, hint, results[0], args.report)
        else:
            names = [os.path.basename(os.path.normpath(p)) for p in args.dumps]
            for name, result in zip(names, results):
                hinted(write_report, hint, result, os.path.join(args.report, name))
            hinted(write_summary, hint, results, args.report)
        print(f"report written to {args.report}")
    return EXIT_OK if all(r["passed"] for r in results) else EXIT_PARITY_FAILURE


def cmd_run_subject(args) -> int:
    from parity.compare import CompareOptions
    from parity.subject_dump import record_subject

    check_output(args.out, "--out", "dump")
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

    root = dump_root(args.report_dir)
    if root is not None:
        raise ParityError(f"{args.report_dir}: lies inside the parity dump {root}; pass a report directory written "
                          "by 'parity compare --report DIR'")
    paths = hinted(rerender, f"re-create it with 'parity compare DUMP --report {args.report_dir}'", args.report_dir)
    print(f"re-rendered {len(paths)} file(s) in {args.report_dir}")
    return EXIT_OK
