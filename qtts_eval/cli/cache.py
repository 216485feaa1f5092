"""`qtts-eval cache list|prune`: what the suite's cache holds, what is stale, and removing it."""

from __future__ import annotations

import argparse
from typing import Any

from qtts_eval import caches


def _duration(text: str) -> float:
    try:
        return caches.parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("cache", help="list or prune the suite's cache (checkpoints, exports, envs)")
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="every entry with its size, state and why")
    listing.set_defaults(run=run_list)
    pruning = actions.add_parser(
        "prune", help="remove stale entries and staging directories of dead processes"
    )
    pruning.add_argument(
        "--older-than",
        type=_duration,
        metavar="DURATION",
        help="only entries last written longer ago than this (90s, 30m, 12h, 7d)",
    )
    pruning.add_argument("--dry-run", action="store_true", help="say what would be removed; remove nothing")
    pruning.set_defaults(run=run_prune)


def _line(entry: caches.Entry) -> str:
    where = f"{entry.area}/{entry.path.name}" if entry.area != "other" else entry.path.name
    return f"{entry.state.value:<9} {caches.human_size(entry.size_bytes):>9}  {where}  ({entry.reason})"


def run_list(args: argparse.Namespace) -> int:
    from qtts_eval.checkpoints import cache_root

    found = caches.entries()
    for entry in found:
        print(_line(entry))
    prunable = [e for e in found if e.state.prunable]
    print(
        f"{cache_root()}: {len(found)} entries, {caches.human_size(sum(e.size_bytes for e in found))}; "
        f"{len(prunable)} prunable ({caches.human_size(sum(e.size_bytes for e in prunable))}): "
        "`qtts-eval cache prune`"
    )
    return 0


def run_prune(args: argparse.Namespace) -> int:
    removed = caches.prune(caches.entries(), older_than_s=args.older_than, dry_run=args.dry_run)
    for entry in removed:
        print(("would remove " if args.dry_run else "removed ") + _line(entry))
    freed = caches.human_size(sum(e.size_bytes for e in removed))
    print(f"{len(removed)} entries, {freed} {'would be freed' if args.dry_run else 'freed'}")
    return 0
