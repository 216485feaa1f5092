"""`qtts-eval bench`: run the benchmark matrix, print a per-fixture summary, write a results run.

Exit codes: 0 every request ended ok, 1 the run finished but at least one request did not (status error or
unsupported; the records say why), 2 bad input (nothing was run).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pandas as pd

from qtts_eval.bench import FULL, QUICK, QUICK_SYNTHETIC_MAX_FRAMES, Bench, BenchConfig
from qtts_eval.cli.options import parse_options
from qtts_eval.metrics.stats import Percentile, format_percentile
from qtts_eval.pipelines.base import CloneMode, Sampling
from qtts_eval.summary import (
    intelligibility_table,
    latency_table,
    memory_drift,
    roofline_table,
    steady_state,
    summarise,
)

_DEFAULTS = BenchConfig()
EXIT_REQUESTS_FAILED = 1  # the run completed, but some requests failed: a candidate that fails is not a pass


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("bench", help="benchmark pipelines over the fixtures")
    parser.add_argument("--pipeline", dest="pipelines", action="append", help="pipeline name (repeatable)")
    parser.add_argument("--model", default=_DEFAULTS.model, help="preset, checkpoint directory or hub id")
    parser.add_argument("--device", default=_DEFAULTS.device, help="torch device, e.g. cpu or cuda:0")
    parser.add_argument("--dtype", default=_DEFAULTS.dtype, choices=("float32", "bfloat16", "float16"))
    parser.add_argument(
        "--attn", default=_DEFAULTS.attn_implementation, help="eager, sdpa, flash_attention_2"
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="every text fixture in every mode (default: the quick matrix, one text per category, modes in "
        "turn)",
    )
    parser.add_argument(
        "--fixture", dest="fixtures", action="append", help="text fixture id, run in every mode (repeatable)"
    )
    parser.add_argument(
        "--voice", dest="voices", action="append", help=f"voice id (default: {_DEFAULTS.voices[0]})"
    )
    parser.add_argument("--mode", dest="modes", action="append", choices=[m.value for m in CloneMode])
    parser.add_argument("--repeats", type=int, default=_DEFAULTS.repeats)
    parser.add_argument(
        "--warmup",
        type=int,
        default=_DEFAULTS.warmup,
        help="unrecorded requests per pipeline and warm-up class (mode, voice, text-length class)",
    )
    parser.add_argument("--seed", type=int, default=_DEFAULTS.seed)
    parser.add_argument(
        "--max-frames", type=int, help="frame budget of every request (default: derived from each text)"
    )
    parser.add_argument("--sample", action="store_true", help="seeded sampling instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=Sampling.temperature)
    parser.add_argument("--top-k", type=int, default=Sampling.top_k)
    parser.add_argument("--top-p", type=float, default=Sampling.top_p)
    parser.add_argument("--repetition-penalty", type=float, default=Sampling.repetition_penalty)
    parser.add_argument(
        "--non-streaming-mode",
        nargs="*",
        metavar="MODE",
        default=None,
        help="every request asks for a talker prompt layout, sent to every pipeline (candidates over the "
        "wire too): the non_streaming_mode=True layout (whole text up front) in the MODEs listed (icl, "
        "xvector; none listed: both), the default layout in the others. Without the flag requests ask for "
        "none and each pipeline uses its own; a port that cannot build the asked layout answers unsupported",
    )
    parser.add_argument(
        "--codec-dtype", choices=("float32", "bfloat16", "float16"), help="reference speech tokenizer dtype"
    )
    parser.add_argument(
        "--stream",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="stream the reference in packets, so first byte and first playable are latencies (default); "
        "--no-stream: whole utterances, first byte = wall time",
    )
    parser.add_argument("--packet-frames", type=int, help="with --stream: frames per packet (default 4)")
    parser.add_argument("--left-context", help="with --stream: decoder left context in frames, or 'exact'")
    parser.add_argument(
        "--option",
        dest="extra_options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="pipeline option (repeatable): KEY for every pipeline, PIPELINE.KEY for one; VALUE is parsed "
        "as JSON when it can be, else kept as text",
    )
    parser.add_argument(
        "--speaker-embedder",
        default=_DEFAULTS.speaker_embedder,
        help="speaker-similarity embedder: resemblyzer, module:Class or file.py:Class; 'none' to skip",
    )
    parser.add_argument("--speaker-embedder-path", help="local weights for the speaker embedder")
    parser.add_argument(
        "--asr",
        default=_DEFAULTS.asr,
        help="intelligibility recogniser (docs/metrics.md): pocketsphinx (English), module:Class or "
        "file.py:Class; 'none' to skip",
    )
    parser.add_argument(
        "--asr-path", help="local weights for the recogniser (e.g. a Whisper model directory)"
    )
    parser.add_argument("--results", type=Path, default=Path("results"), help="results root directory")
    parser.add_argument("--run-id", help="name of the run directory (default: UTC timestamp)")
    parser.add_argument(
        "--resume", type=Path, metavar="RUN_DIR", help="continue a run; skips what is recorded"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    cluster = parser.add_argument_group("Ray cluster (docs/ray.md)")
    cluster.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="fan the matrix out over a Ray cluster: auto, host:6379 or ray://host:10001",
    )
    cluster.add_argument(
        "--ray-gpus-per-worker", type=float, default=0.0, help="1 on GPU clusters: a worker per card"
    )
    cluster.add_argument("--ray-cpus-per-worker", type=float, default=1.0, help="CPU slots per worker")
    cluster.add_argument("--ray-accelerator-type", help="pin workers to one GPU type, e.g. H100")
    cluster.add_argument("--ray-workers", type=int, help="number of workers (default: as many as fit)")
    parser.set_defaults(run=run)


def _config(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(
        pipelines=tuple(args.pipelines or _DEFAULTS.pipelines),
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        attn_implementation=args.attn,
        matrix=FULL if args.full else QUICK,
        fixtures=tuple(args.fixtures or ()),
        voices=tuple(args.voices or _DEFAULTS.voices),
        modes=tuple(args.modes or _DEFAULTS.modes),
        repeats=args.repeats,
        warmup=args.warmup,
        seed=args.seed,
        max_frames=args.max_frames,
        non_streaming_modes=_layouts(args.non_streaming_mode),
        sampling=Sampling(
            do_sample=args.sample,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            repetition_penalty=args.repetition_penalty,
        ),
        speaker_embedder=None if args.speaker_embedder == "none" else args.speaker_embedder,
        speaker_embedder_path=args.speaker_embedder_path,
        asr=None if args.asr == "none" else args.asr,
        asr_path=args.asr_path,
        options=_options(args),
    )


def _layouts(listed: list[str] | None) -> tuple[str, ...] | None:
    """--non-streaming-mode: absent (no layout asked), bare (every mode) or the modes listed."""
    if listed is None:
        return None
    return tuple(listed) or tuple(mode.value for mode in CloneMode)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    # The reference-only flags are scoped to it, so other pipelines in the same run do not see them.
    options: dict[str, Any] = {}
    if args.codec_dtype is not None:
        options["reference.codec_dtype"] = args.codec_dtype
    if args.stream and "reference" in (args.pipelines or _DEFAULTS.pipelines):
        options["reference.streaming"] = True
    if args.packet_frames is not None:
        options["reference.packet_frames"] = args.packet_frames
    if args.left_context is not None:
        options["reference.left_context"] = args.left_context
    options.update(parse_options(args.extra_options))
    return options


def _latency_text(table: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for row in table.to_dict(orient="records"):
        scale, digits = (1.0, 3) if row["metric"] == "rtf" else (1000.0, 1)
        cells = {"pipeline": row["pipeline"], "metric": row["metric"], "n": row["n"], "errors": row["errors"]}
        for q in ("50", "95", "99"):
            p = Percentile(float(q), row[f"p{q}"], row[f"p{q}_low"], row[f"p{q}_high"], row["n"])
            cells[f"p{q}"] = format_percentile(p, scale, digits)
        rows.append(cells)
    return pd.DataFrame(rows)


def _next_steps(run_dir: Path, pipelines: list[str]) -> str:
    """What a newcomer runs next on this run: a head-to-head, a gate, the notebooks."""
    lines = ["next:"]
    candidates = [name for name in pipelines if name != "reference"]
    if "reference" in pipelines and candidates:
        lines.append(f"  qtts-eval compare {run_dir} --candidate {candidates[0]}   # head-to-head table")
    else:
        lines.append("  qtts-eval bench --pipeline reference --pipeline NAME   # a candidate beside it")
    lines.append(f"  qtts-eval gate {run_dir} --gates GATES.toml --baseline EARLIER_RUN   # regressions")
    lines.append("  qtts-eval lab   # the notebooks read results/ (notebooks/)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.resume:
        bench = Bench.resume(args.resume)
    else:
        bench = Bench.create(_config(args), args.results, args.run_id)
    if args.ray:
        from qtts_eval.cluster import ClusterConfig, run_on_cluster

        cluster = ClusterConfig(
            address=args.ray,
            gpus_per_worker=args.ray_gpus_per_worker,
            cpus_per_worker=args.ray_cpus_per_worker,
            accelerator_type=args.ray_accelerator_type,
            workers=args.ray_workers,
        )
        frame = run_on_cluster(bench, cluster, progress=not args.no_progress)
    else:
        frame = bench.run(progress=not args.no_progress)
    with pd.option_context(
        "display.width", 160, "display.max_columns", 20, "display.float_format", "{:.3f}".format
    ):
        print(summarise(frame).to_string(index=False))
        if len(frame) and frame["chunks"].max() > 1:
            print("\nlatency, ms (RTF as a ratio): p50 / p95 / p99 with bootstrap 95 % intervals")
            print(_latency_text(latency_table(frame)).to_string(index=False))
        floor = roofline_table(frame)
        if len(floor):
            print("\nroofline: weights one frame reads / the device's measured bandwidth = a floor per frame")
            print(floor.to_string(index=False))
        steady = steady_state(frame)
        if len(steady):
            print("\nsteady state: first request of each cell / median of its later repeats")
            print(steady.to_string(index=False))
        intelligibility = intelligibility_table(frame)
        if len(intelligibility):
            print(
                "\nintelligibility: error rates of the transcribed output against the text (docs/metrics.md)"
            )
            print(intelligibility.to_string(index=False))
        drift = memory_drift(frame)
        if len(drift):
            print("\nmemory held after each request (drift over sequential generations)")
            print(drift.to_string(index=False))
        warmups = pd.DataFrame(bench.store.warmups())
        if len(warmups):
            print("\nwarm-up (not in the records): load and first-call times, s")
            print(warmups.drop(columns=["schema_version"]).to_string(index=False))
    env = frame.iloc[0] if len(frame) else None
    if env is not None and bool(env.get("env_synthetic")):
        print(
            f"\nweights: synthetic ({env.get('env_synthetic_preset') or 'no model'}, random): speed and "
            "memory are real, audio is noise-like and generation runs to the frame budget"
            + (
                f" (at most {QUICK_SYNTHETIC_MAX_FRAMES} frames in a quick run; --full runs whole texts)."
                if bench.config.quick
                else "."
            )
        )
    failed = int((frame["status"] != "ok").sum()) if len(frame) else 0
    print(f"\n{len(frame)} records, {failed} not ok -> {bench.store.directory}")
    print(_next_steps(bench.store.directory, sorted(set(frame["pipeline"])) if len(frame) else []))
    return EXIT_REQUESTS_FAILED if failed else 0
