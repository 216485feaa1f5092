"""`qtts-eval scoreboard`: every installable candidate (and any --candidate) judged on the same weights:
conformance, parity sweeps in both modes, a same-work bench against the reference (qtts_eval.scoreboard).

Exit codes: 0 every part of every row ran (whatever its verdicts), 1 some part failed or was skipped (the
table says why), 2 bad input.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

from qtts_eval.cli.options import parse_options

EXIT_INCOMPLETE = 1


def add_parser(commands: Any) -> None:
    from qtts_eval.scoreboard import CONTROL, DEFAULT_BUDGET_S, Part, Settings

    defaults = Settings(candidates=(CONTROL,))
    parser = commands.add_parser(
        "scoreboard",
        help="every installable candidate judged by one command: conformance, parity, same-work bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--candidate",
        dest="candidates",
        action="append",
        default=[],
        metavar="SPEC",
        help=f"a further row (repeatable): a registry candidate, {CONTROL!r} (the control row) or fault:NAME",
    )
    parser.add_argument(
        "--no-registry",
        action="store_true",
        help="only the --candidate rows, not every registry candidate installable on this machine",
    )
    parser.add_argument(
        "--model", default=defaults.model, help=f"weights of every row (default {defaults.model})"
    )
    parser.add_argument("--device", default=defaults.device, help="torch device of the reference side")
    parser.add_argument(
        "--fixture",
        dest="fixtures",
        action="append",
        default=[],
        help="text fixture of the parity sweeps and the bench (repeatable; default "
        f"{', '.join(defaults.fixtures)})",
    )
    parser.add_argument("--voice", default=defaults.voice, help="fixture voice to clone")
    parser.add_argument("--frames", type=int, default=defaults.parity_frames, help="parity frame budget")
    parser.add_argument("--bench-frames", type=int, default=defaults.bench_frames, help="bench frame budget")
    parser.add_argument(
        "--conformance-frames", type=int, default=defaults.conformance_frames, help="conformance frame budget"
    )
    parser.add_argument("--repeats", type=int, default=defaults.repeats, help="bench repeats per cell")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=DEFAULT_BUDGET_S,
        help=f"seconds per candidate in this invocation (default {DEFAULT_BUDGET_S:g}; a resumed run has "
        "its own)",
    )
    parser.add_argument(
        "--part",
        dest="parts",
        action="append",
        default=[],
        choices=[part.value for part in Part],
        help="score only these parts (repeatable; default all)",
    )
    parser.add_argument(
        "--option",
        dest="options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="option of every registry candidate (repeatable), e.g. threads=1",
    )
    parser.add_argument("--install", action="store_true", help="build missing candidate environments first")
    parser.add_argument(
        "--pip-arg", dest="pip_args", action="append", default=[], help="extra pip argument of --install"
    )
    parser.add_argument(
        "--causes", default="", help="TOML file of [[cause]] candidate/part/at/cause written beside verdicts"
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, help="output directory (default results/scoreboard/<UTC time>)")
    where.add_argument(
        "--resume", type=Path, metavar="DIR", help="continue a scoreboard: finished parts are not redone"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from qtts_eval.scoreboard import Scoreboard, Settings, check_spec, installable_here, to_text

    if args.resume is not None:
        board = Scoreboard.resume(args.resume)
    else:
        listed = [check_spec(spec) for spec in args.candidates]
        rows = list(dict.fromkeys([*([] if args.no_registry else installable_here()), *listed]))
        settings = Settings(
            candidates=tuple(rows),
            model=args.model,
            device=args.device,
            fixtures=tuple(args.fixtures) or Settings.fixtures,
            voice=args.voice,
            parity_frames=args.frames,
            bench_frames=args.bench_frames,
            conformance_frames=args.conformance_frames,
            repeats=args.repeats,
            parts=tuple(args.parts) or Settings.parts,
            options=parse_options(args.options),
            install=args.install,
            pip_args=tuple(args.pip_args),
            causes=args.causes,
        )
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        board = Scoreboard.create(args.out or Path("results") / "scoreboard" / stamp, settings)
    data = board.run(args.budget_s)
    from qtts_eval.scoreboard import load_causes

    print()
    print(to_text(data, load_causes(board.settings.causes)))
    print(f"\nscoreboard: {board.out / 'scoreboard.html'} (and .md, .json)")
    complete = all(result["status"] == "done" for row in data["rows"] for result in row["parts"].values())
    return 0 if complete else EXIT_INCOMPLETE
