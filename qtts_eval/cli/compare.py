"""`qtts-eval compare`: a candidate against the reference in one run, or a run against a baseline run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from qtts_eval import compare
from qtts_eval.errors import ResultsError
from qtts_eval.results import load_run


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "compare",
        help="head-to-head table: ratios with intervals, codes match, errors and same-work flags",
        description="Pairs requests on (fixture, voice, mode, repeat). Exits 1 when a row is flagged (the "
        "two sides did different work, or a request of either side failed); notes (documented conventions "
        "such as a port returning the whole frame budget) never fail. Refuses (exit 2) two sides that are "
        "not comparable: another machine, GPU, stack, model or settings for a baseline run, another machine "
        "or commit within a run.",
    )
    parser.add_argument("run_dir", type=Path, help="results run directory")
    parser.add_argument(
        "--candidate", help="pipeline to compare (default: the run's only pipeline that is not the baseline)"
    )
    parser.add_argument("--baseline", default="reference", help="pipeline of the same run to compare with")
    parser.add_argument(
        "--baseline-run", type=Path, help="compare with the candidate's records in this earlier run instead"
    )
    parser.add_argument(
        "--may-differ",
        action="append",
        default=[],
        metavar="ENV_COLUMN",
        help="an env_ column allowed to differ between the two sides on purpose (repeatable): env_gpu_name",
    )
    parser.add_argument(
        "--same-work",
        action="store_true",
        help="refuse (exit 2, naming each difference) when the two sides did different work (prompt cache, "
        "delivery, layout, budget convention, instrumentation, threads, precision, memory kind)",
    )
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    parser.add_argument("--html", type=Path, help="also write the table as a self-contained HTML page here")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    frame = load_run(args.run_dir)
    if frame.empty:
        raise ResultsError(f"{args.run_dir} holds no records")
    names = set(frame["pipeline"])
    if args.baseline_run is None:
        name = compare.pick_candidate(names, args.candidate, args.baseline)
        candidate, baseline = compare.within_run(frame, name, args.baseline, args.may_differ)
    else:
        name = compare.pick_candidate(names, args.candidate, None)
        before = load_run(args.baseline_run)
        labels = (args.run_dir.name, args.baseline_run.name)
        candidate, baseline = compare.between_runs(frame, before, name, labels, args.may_differ)
    table = compare.compare(candidate, baseline)
    if args.same_work:
        differing = compare.work_differs(table)
        if differing:
            raise ResultsError(
                f"{candidate.label} and {baseline.label} did different work (--same-work): "
                + "; ".join(differing)
            )
    heading = compare.title(candidate, baseline)
    print(heading)
    print(compare.to_text(table))
    for line in compare.error_lines(candidate, baseline):
        print(line)
    if args.markdown:
        args.markdown.write_text(compare.to_markdown(table, heading), encoding="utf-8")
    if args.html:
        args.html.write_text(compare.to_html(table, heading), encoding="utf-8")
    return 1 if compare.flagged(table) else 0
