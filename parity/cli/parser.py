"""The ``parity`` command line: parse and dispatch (each command lives with its stage: ``reference``, ``compare``,
``verify``).

Exit codes: 0 success (compare: every probe passed), 1 parity failure (compare), 2 bad input. Bad input is
one line on stderr and no traceback (``--debug`` shows it).
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import traceback

from parity.errors import EXIT_BAD_INPUT, EXIT_OK, ParityError
from parity.heap import return_large_blocks_to_os
from parity.cli.common import MODE_CHOICES, parse_threads, say
from parity.cli.compare import cmd_compare, cmd_report, cmd_run_subject
from parity.cli.reference import cmd_cases, cmd_convert, cmd_dump, cmd_ingest, cmd_plugins
from parity.cli.verify import cmd_verify


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
    s.add_argument("--threads", type=parse_threads, default=1,
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
    g.add_argument("--text-encoder-config", metavar="MT5.json",
                   help="record the text encoder too: its config (an MT5Config); with --input-ids instead of --prompts")
    g.add_argument("--text-encoder-weights", metavar="W.safetensors", help="the text encoder's state dict")
    g.add_argument("--text-encoder-seed", type=int, help="random text encoder weights with this seed")
    g.add_argument("--input-ids", metavar="IDS.safetensors",
                   help="token ids and masks (.safetensors or .npz): prompt_input_ids, prompt_attention_mask, "
                        "negative_prompt_input_ids, negative_prompt_attention_mask ((B, L))")
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
        say(f"parity {args.command}: error: {exc}")
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
        say(f"parity {args.command}: error: {where}{' '.join(str(exc.strerror or exc).split())}; {hint}")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        say(f"parity {args.command}: interrupted; nothing half-written was left in place")
        return 130
    except MemoryError:
        say(f"parity {args.command}: error: out of memory; try --probes to compare fewer probes")
        return EXIT_BAD_INPUT
    except Exception as exc:  # an input we did not anticipate: still one line, never a traceback
        if args.debug:
            traceback.print_exc()
        say(f"parity {args.command}: error: unexpected {exc.__class__.__name__}: {' '.join(str(exc).split())[:200]}"
             f"; rerun with --debug for the traceback and report it")
        return EXIT_BAD_INPUT
