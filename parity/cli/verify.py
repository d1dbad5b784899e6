"""``verify``: every problem of a dump, listed."""

from __future__ import annotations

import os

from parity.errors import EXIT_OK, ParityError, printable


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
