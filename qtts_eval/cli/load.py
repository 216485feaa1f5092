"""`qtts-eval load URL|CMD`: closed-loop concurrency sweep and open-loop Poisson arrivals; percentiles."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

from qtts_eval import environment
from qtts_eval.errors import BenchError
from qtts_eval.fixtures import load_fixtures
from qtts_eval.pipelines.base import CloneMode
from qtts_eval.results import RunStore
from qtts_eval.wire.client import Timeouts
from qtts_eval.wire.load import (
    OUTCOMES,
    LevelResult,
    LoadOptions,
    LoadRunner,
    RateSearch,
    find_max_rate,
    first_error,
    load_records,
    streaming_verdict,
    summarise,
)
from qtts_eval.wire.slo import Slo, parse_slo

_DEFAULTS = LoadOptions()
_COLUMNS = (
    ("kind", "{}"),
    ("level", "{:g}"),
    ("requests", "{}"),
    ("errors", "{}"),
    ("first_ms_p50", "{:.0f}"),
    ("first_ms_p95", "{:.0f}"),
    ("first_ms_p99", "{:.0f}"),
    ("rtf_p50", "{:.3f}"),
    ("rtf_p95", "{:.3f}"),
    ("rtf_p99", "{:.3f}"),
    ("audio_s_per_s", "{:.3f}"),
    ("underruns", "{}"),
    ("continuity_ok", "{:.2f}"),
    ("lag_ms_p95", "{:.0f}"),
    ("peak_in_flight", "{}"),
    ("window_p50", "{:.2f}"),
    ("buffered", "{}"),
    *((outcome, "{}") for outcome in OUTCOMES),
)
_SLO_COLUMNS = (("goodput", "{:.2f}"), ("slo_met", "{}"))


def _numbers(kind: type) -> Any:
    def parse(text: str) -> tuple[Any, ...]:
        return tuple(kind(part) for part in text.split(",") if part)

    return parse


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("load", help="load-test a worker command or loopback ws:// URL")
    parser.add_argument("target", help="worker command line (one quoted string) or ws://127.0.0.1:PORT/...")
    parser.add_argument(
        "--concurrency",
        type=_numbers(int),
        default=_DEFAULTS.concurrency,
        help="closed-loop session counts, comma-separated (default 1,3,6,10; empty string for none)",
    )
    parser.add_argument(
        "--rates",
        type=_numbers(float),
        default=(),
        help="open-loop arrivals per second, comma-separated",
    )
    parser.add_argument("--requests-per-session", type=int, default=_DEFAULTS.requests_per_session)
    parser.add_argument(
        "--open-requests", type=int, default=_DEFAULTS.open_requests, help="arrivals per rate"
    )
    parser.add_argument("--max-sessions", type=int, default=_DEFAULTS.max_sessions, help="open-loop bound")
    parser.add_argument(
        "--max-level-s", type=float, default=_DEFAULTS.max_level_s, help="time bound per level"
    )
    parser.add_argument("--frames", type=int, default=_DEFAULTS.frames, help="frame budget per request")
    parser.add_argument("--mode", default=_DEFAULTS.mode.value, choices=[m.value for m in CloneMode])
    parser.add_argument("--voice", default=_DEFAULTS.voice)
    parser.add_argument(
        "--model", help="checkpoint a worker command's {model_dir} stands for (preset, path or hub id)"
    )
    parser.add_argument("--timeout", type=float, default=Timeouts.message_s, help="seconds per message")
    parser.add_argument(
        "--slo",
        type=parse_slo,
        help="e.g. 'first_byte<=0.2,underruns==0,errors<=0.01,goodput>=0.95' (docs/benchmarks.md)",
    )
    parser.add_argument(
        "--find-max-rate",
        type=float,
        metavar="START_HZ",
        help="search open-loop rates from START_HZ (doubling, then bisection) for the highest meeting --slo",
    )
    parser.add_argument("--max-levels", type=int, default=8, help="--find-max-rate: levels at most")
    parser.add_argument("--max-search-s", type=float, default=600.0, help="--find-max-rate: seconds at most")
    parser.add_argument("--json", type=Path, help="also write the per-level rows here")
    parser.add_argument("--results", type=Path, default=Path("results"), help="results root directory")
    parser.add_argument("--run-id", help="name of the run directory (default: load-<UTC timestamp>)")
    parser.set_defaults(run=run)


def _store(args: argparse.Namespace, options: LoadOptions) -> RunStore:
    now = dt.datetime.now(dt.timezone.utc)
    run_id = args.run_id or "load-" + now.strftime("%Y%m%dT%H%M%SZ")
    fixtures = load_fixtures()
    store = RunStore(args.results / run_id)
    store.create(
        {
            "run_id": run_id,
            "created_at": now.isoformat(timespec="seconds"),
            "config": {"load": {**dataclasses.asdict(options), "target": args.target}},
            "fixtures_version": fixtures.version,
            "fixtures_hash": fixtures.content_hash,
            "machine": environment.fingerprint(),
        }
    )
    return store


def run(args: argparse.Namespace) -> int:
    options = LoadOptions(
        concurrency=args.concurrency,
        rates_hz=args.rates,
        requests_per_session=args.requests_per_session,
        open_requests=args.open_requests,
        max_sessions=args.max_sessions,
        max_level_s=args.max_level_s,
        frames=args.frames,
        mode=CloneMode(args.mode),
        voice=args.voice,
        timeouts=Timeouts(message_s=args.timeout),
        model=args.model,
    )
    slo: Slo | None = args.slo
    if args.find_max_rate is not None and slo is None:
        raise BenchError("--find-max-rate needs --slo: the rate is the highest whose goodput meets it")
    columns = _COLUMNS + (_SLO_COLUMNS if slo else ())
    print("  ".join(name for name, _ in columns), flush=True)
    rows: list[dict[str, Any]] = []

    def show(result: LevelResult) -> None:
        row = summarise(result, slo)
        rows.append(row)
        print("  ".join(fmt.format(row[name]) for name, fmt in columns), flush=True)
        error = first_error(result)
        if error:
            print(f"    first error: {error}", flush=True)
        verdict = streaming_verdict(row)
        if verdict:
            print(f"    {verdict}", flush=True)

    runner = LoadRunner(args.target, options)
    results = runner.run(show)
    search: RateSearch | None = None
    if args.find_max_rate is not None and slo is not None:
        search = find_max_rate(runner, slo, args.find_max_rate, args.max_levels, args.max_search_s, show)
        results += [result for result, _ in search.levels]
    store = _store(args, options)
    header = store.header()
    env = {**header["machine"], "fixtures_version": header["fixtures_version"]}
    env["fixtures_hash"] = header["fixtures_hash"]
    for record in load_records(store.directory.name, args.target, options, results, env, slo):
        store.append(record)
    store.write_parquet()
    print(
        "first_ms: speak sent (closed) or arrival (open) -> first audio decoded at the harness; "
        "rtf: (last audio - t0) / audio seconds; audio_s_per_s: audio delivered per wall second"
    )
    if slo is not None:
        print(f"goodput: share of requests that met every per-request term of {slo}")
    if search is not None:
        print(_search_line(search))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    print(f"{sum(len(r.samples) for r in results)} records -> {store.directory}")
    return 1 if any(row["errors"] for row in rows) else 0


def _search_line(search: RateSearch) -> str:
    """The found rate with its bracket: goodput is a step in the rate, so the bracket is the interval."""
    if search.passed_hz is None:
        return f"max rate: none found; even {search.failed_hz:g}/s failed the SLO"
    upper = f"{search.failed_hz:g}/s failed" if search.failed_hz is not None else "no failing rate reached"
    return (
        f"max rate: {search.passed_hz:g}/s meets the SLO; interval [{search.passed_hz:g}, "
        f"{search.failed_hz if search.failed_hz is not None else math.inf:g}) /s "
        f"(bracket between the last passing and first failing level tried; {upper})"
    )
