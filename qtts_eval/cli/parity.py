"""`qtts-eval parity`: compare a candidate with the reference stage by stage; HTML/Markdown/JSON reports."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from qtts_eval import fixtures
from qtts_eval.cli.options import parse_options
from qtts_eval.errors import ParityError
from qtts_eval.pipelines.base import CloneMode, PipelineConfig, Request, Sampling

DEFAULT_TEXT = "Hello there."  # short: parity needs a few frames, not a long utterance
DEFAULT_FRAMES = 8  # frame budget; random weights never emit EOS


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "parity",
        help="compare a candidate with the reference, stage by stage",
        description="CANDIDATE is 'reference' (the official package again, e.g. with --candidate-dtype), "
        "'fault:NAME' (a planted fault), a registered pipeline declaring stage_dumps, or a .safetensors dump "
        "written by a port (with --forced-dump for its teacher-forced run). Exits 1 when parity fails.",
    )
    parser.add_argument("candidate", help="candidate to compare")
    parser.add_argument("--model", default="tiny", help="model ref for the reference (default: tiny)")
    parser.add_argument("--device", default="cpu", help="torch device for in-process sides")
    parser.add_argument(
        "--candidate-dtype", default="float32", help="talker dtype of an in-process candidate"
    )
    parser.add_argument(
        "--profile", default=None, help="tolerance profile (default: by the candidate's dtype)"
    )
    parser.add_argument("--text", default=DEFAULT_TEXT, help="text to speak")
    parser.add_argument("--language", default="english", help="language argument")
    parser.add_argument("--voice", default="slt", help="fixture voice to clone")
    parser.add_argument(
        "--mode", choices=[m.value for m in CloneMode], default="icl", help="voice-clone mode"
    )
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help="frame budget")
    parser.add_argument("--seed", type=int, default=0, help="torch seed before generation")
    parser.add_argument("--non-streaming-mode", action="store_true", help="the other talker prompt layout")
    parser.add_argument("--forced-dump", type=Path, default=None, help="a port's teacher-forced dump")
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


def _pipeline(args: argparse.Namespace, options: dict[str, Any]) -> Any:
    from qtts_eval import pipelines
    from qtts_eval.parity.capture import HookedReference
    from qtts_eval.parity.faults import FAULTS

    config = PipelineConfig(model=args.model, device=args.device, dtype=args.candidate_dtype, options=options)
    if args.candidate == "reference":
        return HookedReference(config)
    if args.candidate.startswith("fault:"):
        name = args.candidate.removeprefix("fault:")
        if name not in FAULTS:
            raise ParityError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}")
        return HookedReference(config, fault=FAULTS[name]())
    return pipelines.create(
        args.candidate, dataclasses.replace(config, options={**options, **parse_options(args.options)})
    )


def run(args: argparse.Namespace) -> int:
    from qtts_eval.parity.capture import HookedReference
    from qtts_eval.parity.dumps import write_dump
    from qtts_eval.parity.profiles import profile_for
    from qtts_eval.parity.report import write_reports
    from qtts_eval.parity.run import compare_files, compare_pipeline, reference_dump

    request = Request.for_voice(
        fixtures.load_fixtures().voice(args.voice),
        args.text,
        args.language,
        CloneMode(args.mode),
        max_frames=args.frames,
        seed=args.seed,
        # Greedy without repetition penalty: the captured logits are then exactly what the choice was made on.
        sampling=Sampling(repetition_penalty=1.0),
    )
    options = {"non_streaming_mode": args.non_streaming_mode}
    reference = HookedReference(PipelineConfig(model=args.model, device=args.device, options=options))
    reference.load()
    ref_dump = reference_dump(reference, request)
    args.out.mkdir(parents=True, exist_ok=True)
    write_dump(ref_dump, args.out / "reference.safetensors")

    candidate_path = Path(args.candidate)
    if candidate_path.suffix == ".safetensors" or candidate_path.exists():
        from qtts_eval.parity.dumps import read_dump

        profile = profile_for(args.profile or read_dump(candidate_path).meta.dtype)
        result = compare_files(ref_dump, candidate_path, args.forced_dump, profile)
    else:
        pipeline = _pipeline(args, options)
        pipeline.load()
        profile = profile_for(args.profile or args.candidate_dtype)
        result = compare_pipeline(
            ref_dump, pipeline, request, profile, args.candidate,
            teacher_forcing=not args.no_teacher_forcing, dump_dir=args.out,
        )  # fmt: skip
    paths = write_reports(result, args.out)
    first = next((c.first_failure for c in (result.free, result.forced) if c and c.first_failure), None)
    verdict = "PASS" if result.passed else f"FAIL at {first.key} ({first.group})" if first else "FAIL"
    print(f"parity {args.candidate} [{profile.name}]: {verdict}\nreport: {paths['html']}")
    return 0 if result.passed else 1
