"""`qtts-eval parity`: compare a candidate with the reference stage by stage; HTML/Markdown/JSON reports."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from qtts_eval.cli.options import parse_options
from qtts_eval.errors import ParityError
from qtts_eval.pipelines.base import CloneMode


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "parity",
        help="compare a candidate with the reference, stage by stage",
        description="CANDIDATE is 'reference' (the official package again, e.g. with --candidate-dtype), "
        "'fault:NAME' (a planted fault), a registered pipeline declaring stage_dumps, a ws:// URL or a "
        "worker command line (one quoted string) of a candidate declaring stage_dumps (docs/protocol.md), or "
        "a .safetensors dump written by a port (with --forced-dump for its teacher-forced run). A dump's "
        "header gives the request and the model; the flags below only override it (in-process candidates "
        "default to tiny, slt, 'Hello there.', icl, 8 frames, seed 0). Several --fixture, --mode or --voice "
        "make a sweep over every combination: one report per request under --out/<fixture>-<mode>-<voice> "
        "and the sweep's table and aggregate in --out/sweep.html, .md and .json. Exits 0 on PASS (every "
        "request of a sweep), 1 on FAIL, UNCLASSIFIED or REPORT-ONLY, 2 on bad input.",
    )
    parser.add_argument("candidate", help="candidate to compare")
    parser.add_argument("--model", default=None, help="model ref of the reference (default: the dump's)")
    parser.add_argument("--device", default="cpu", help="torch device for in-process sides")
    parser.add_argument(
        "--candidate-dtype", default="float32", help="talker dtype of an in-process candidate"
    )
    parser.add_argument(
        "--candidate-codec-dtype",
        default=None,
        help="codec dtype of an in-process candidate (default float32)",
    )
    parser.add_argument(
        "--profile", default=None, help="tolerance profile (default: by the candidate's declared precision)"
    )
    parser.add_argument("--text", default=None, help="text to speak")
    parser.add_argument(
        "--fixture",
        dest="fixtures",
        action="append",
        default=[],
        help="text fixture id to speak, in its language (repeatable: a sweep)",
    )
    parser.add_argument("--language", default=None, help="language argument")
    parser.add_argument(
        "--voice", dest="voices", action="append", default=[], help="fixture voice to clone (repeatable)"
    )
    parser.add_argument(
        "--mode",
        dest="modes",
        action="append",
        default=[],
        choices=[m.value for m in CloneMode],
        help="voice-clone mode (repeatable)",
    )
    parser.add_argument("--frames", type=int, default=None, help="frame budget")
    parser.add_argument("--seed", type=int, default=None, help="torch seed before generation")
    parser.add_argument(
        "--non-streaming-mode",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the talker prompt layout (default: the dump's, else off)",
    )
    parser.add_argument("--forced-dump", type=Path, default=None, help="a port's teacher-forced dump")
    parser.add_argument(
        "--force",
        default=None,
        help="inputs an in-process candidate is teacher-forced on, comma-separated among spk.embedding, "
        "codec_enc.codes, codes (default: all)",
    )
    parser.add_argument("--no-teacher-forcing", action="store_true", help="skip the teacher-forced run")
    parser.add_argument("--out", type=Path, default=Path("results/parity"), help="report directory")
    parser.add_argument(
        "--option",
        dest="options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="option of a pipeline candidate (repeatable), e.g. threads=1 for qwentts-cpp",
    )
    parser.set_defaults(run=run)


def _forced_inputs(args: argparse.Namespace) -> tuple[Any, ...]:
    from qtts_eval.pipelines.base import ForcedInput

    if args.no_teacher_forcing:
        return ()
    if args.force is None:
        return tuple(ForcedInput)
    try:
        return tuple(ForcedInput(name.strip()) for name in args.force.split(",") if name.strip())
    except ValueError as exc:
        known = ", ".join(f.value for f in ForcedInput)
        raise ParityError(f"--force: {exc}; known inputs: {known}") from None


def run(args: argparse.Namespace) -> int:
    from qtts_eval.parity.session import run_session, run_sweep, sweep_requests

    shared = {
        "model": args.model,
        "max_frames": args.frames,
        "seed": args.seed,
        "non_streaming_mode": args.non_streaming_mode,
    }
    sides = {
        "profile": args.profile,
        "device": args.device,
        "candidate_dtype": args.candidate_dtype,
        "candidate_codec_dtype": args.candidate_codec_dtype,
        "forced_inputs": _forced_inputs(args),
        "candidate_options": parse_options(args.options),
    }
    requests = sweep_requests(args.fixtures, args.modes, args.voices, args.text, args.language)
    if len(requests) > 1:
        if args.forced_dump is not None:
            raise ParityError("--forced-dump belongs to one dump; a sweep runs its candidate")
        sweep = run_sweep(args.candidate, args.out, requests, shared, **sides)
        print(f"parity sweep {args.candidate} [{sweep.profile}]: {sweep.headline()}")
        for row in sweep.rows:
            print(f"  {row.request}: {row.note if row.verdict != 'pass' else 'PASS'}")
        print(f"report: {args.out / 'sweep.html'}")
        return 0 if sweep.passed else 1
    # One request: a dump's header gives what no flag names.
    overrides = {
        **shared,
        "voice": args.voices[0] if args.voices else None,
        "text": requests[0].text if args.fixtures else args.text,
        "language": requests[0].language if args.fixtures else args.language,
        "mode": args.modes[0] if args.modes else None,
    }
    result = run_session(args.candidate, args.out, overrides, forced_dump=args.forced_dump, **sides)
    print(f"parity {args.candidate} [{result.profile.name}]: {result.verdict_line()}")
    print(f"report: {args.out / 'report.html'}")
    return 0 if result.passed else 1
