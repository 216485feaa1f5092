"""`qtts-eval doctor [NAME ...]`: explain what stands between each candidate and `--pipeline NAME`, and what
the suite's cache holds."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("doctor", help="explain what a candidate needs before it can run")
    parser.add_argument("names", nargs="*", help="candidate names (default: every installable candidate)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from qtts_eval import caches
    from qtts_eval.candidates import envs
    from qtts_eval.candidates.registry import CANDIDATES, Support, candidate
    from qtts_eval.checkpoints import cache_root

    specs = [candidate(n) for n in args.names] or [c for c in CANDIDATES if c.support is Support.ADAPTER]
    ready = True
    for spec in specs:
        problems = envs.missing(spec.name)
        ready = ready and not problems
        print(f"{spec.name}: {'ready' if not problems else 'not ready'}")
        for problem in problems:
            print(f"  - {problem}")
    found = caches.entries()
    total = caches.human_size(sum(e.size_bytes for e in found))
    prunable = caches.human_size(sum(e.size_bytes for e in found if e.state.prunable))
    print(
        f"cache {cache_root()}: {total} in {len(found)} entries, "
        f"{prunable} stale or orphaned (`qtts-eval cache list`, `qtts-eval cache prune`)"
    )
    return 0 if ready else 1
