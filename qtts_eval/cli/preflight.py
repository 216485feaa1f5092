"""Preflight of a campaign: will `qtts-eval bench` with these exact flags run here? One line says.

Run as ``python -m qtts_eval.cli.preflight BENCH-FLAGS...``, the flags of the `qtts-eval bench` run to come.
In order it imports everything that run needs (the CLI with every subcommand, torch, NVML on CUDA, the
official package for the reference, the speaker embedder and recogniser asked for, each candidate's own
environment), checks the CUDA device, then sends one 2-frame request per pipeline and mode through the
bench itself, into a scratch directory. It stops at the first problem with ONE line on stdout naming it
(exit 3), or prints one ``preflight ok`` line (exit 0); anything else printed on the way goes to stderr.

It is a module of the CLI package but no subcommand (not in SUBCOMMANDS) because `qtts-eval` imports every
subcommand at start: a package missing there is one of the things it must name, in a line, not a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXIT_FAILED = 3
PREFLIGHT_FRAMES = 2  # frames per preflight request: enough to pass through talker, predictor and codec
REASON_CHARS = 300  # a reason longer than this is cut: the line must stay readable


class PreflightFailed(Exception):
    """The one line that says what stands in the way."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    head, tail_marker, tail = line.partition("(last lines: ")
    if tail_marker:  # a worker that died: the last line of its stderr is the reason, its log path is not
        line = f"{head.split(';')[0]}: {tail.rstrip(')').split(' | ')[-1].strip()}"
    return f"{type(exc).__name__}: {line}"[:REASON_CHARS]


def require_import(module: str, why: str) -> Any:
    """Import `module`; a failure becomes the line naming the package that is missing."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = exc.name or module
        raise PreflightFailed(f"missing Python package {missing!r} (imported by {module}, {why})") from exc
    except Exception as exc:  # a broken install fails differently: an ABI error, a version check
        raise PreflightFailed(f"cannot import {module} ({why}): {_first_line(exc)}") from exc


def _bench_config(argv: Sequence[str]) -> Any:
    require_import("qtts_eval.cli", "the qtts-eval command line")
    from qtts_eval.cli import SUBCOMMANDS

    for name in SUBCOMMANDS:  # `qtts-eval` imports every subcommand before it runs any
        require_import(f"qtts_eval.cli.{name}", "the qtts-eval command line imports it at start")
    from qtts_eval.cli import bench

    parser = argparse.ArgumentParser(prog="python -m qtts_eval.cli.preflight", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    bench.add_parser(commands)
    try:
        args = parser.parse_args(["bench", *argv])
    except SystemExit as exc:
        raise PreflightFailed(
            f"the bench flags do not parse (exit {exc.code}; argparse said why on stderr)"
        ) from exc
    return bench._config(args)


def _check_stack(config: Any) -> str:
    """Imports and the device; returns the device's name."""
    from qtts_eval.bench import REFERENCE
    from qtts_eval.candidates.registry import CANDIDATES

    torch = require_import("torch", "every in-process pipeline and the bandwidth probe")
    device = "cpu"
    if config.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PreflightFailed(
                f"no CUDA device visible to torch {torch.__version__} for --device {config.device}"
            )
        require_import("pynvml", "NVML process memory and board power (the nvidia-ml-py package)")
        device = torch.cuda.get_device_name(torch.device(config.device))
    if REFERENCE in config.pipelines:
        from qtts_eval import official

        try:
            official.qwen_tts()
        except ModuleNotFoundError as exc:
            raise PreflightFailed(
                f"missing Python package {exc.name or 'qwen_tts'!r} (imported by qwen_tts, the reference)"
            ) from exc
        except Exception as exc:
            raise PreflightFailed(f"cannot import qwen_tts (the reference): {_first_line(exc)}") from exc
    if config.speaker_embedder:
        from qtts_eval.metrics.speaker import load_embedder

        _load(
            lambda: load_embedder(config.speaker_embedder, config.speaker_embedder_path), "--speaker-embedder"
        )
    if config.asr:
        from qtts_eval.metrics.asr import load_recognizer

        _load(lambda: load_recognizer(config.asr, config.asr_path), "--asr")
    candidates = {spec.name for spec in CANDIDATES}
    for name in config.pipelines:
        if name in candidates:
            from qtts_eval.candidates import envs

            problems = envs.missing(name)
            if problems:
                raise PreflightFailed(f"candidate {name} is not ready: {problems[0][:REASON_CHARS]}")
    return device


def _load(load: Any, flag: str) -> None:
    try:
        load()
    except ModuleNotFoundError as exc:
        raise PreflightFailed(f"missing Python package {exc.name!r} ({flag}; or pass {flag} none)") from exc
    except Exception as exc:
        raise PreflightFailed(f"{flag} cannot load: {_first_line(exc)} (or pass {flag} none)") from exc


def _two_frames(config: Any) -> int:
    """One 2-frame request per pipeline and mode through the bench with these flags; the requests sent."""
    from qtts_eval.bench import Bench

    short = dataclasses.replace(
        config,
        max_frames=PREFLIGHT_FRAMES,
        repeats=1,
        warmup=0,
        fixtures=config.fixtures[:1] or ("en_short",),
    )
    with tempfile.TemporaryDirectory(prefix="qtts-preflight-") as scratch:
        try:
            frame = Bench.create(short, Path(scratch), "preflight").run(progress=False)
        except Exception as exc:
            raise PreflightFailed(f"the 2-frame bench stopped: {_first_line(exc)}") from exc
    failed = frame[frame["status"] != "ok"]
    if len(failed):
        row = failed.iloc[0]
        raise PreflightFailed(
            f"{row['pipeline']} failed its {PREFLIGHT_FRAMES}-frame {row['mode']} request: "
            f"{str(row['error']).strip().splitlines()[0][:REASON_CHARS]}"
        )
    silent = frame[frame["frames_generated"].fillna(0) < 1]
    if len(silent):
        raise PreflightFailed(f"{silent.iloc[0]['pipeline']} returned no frame for a 2-frame request")
    return len(frame)


def preflight(argv: Sequence[str]) -> str:
    """The ok line, or PreflightFailed with the line that says what is wrong."""
    started = time.monotonic()
    config = _bench_config(argv)
    device = _check_stack(config)
    requests = _two_frames(config)
    return (
        f"preflight ok: {', '.join(config.pipelines)} on {config.device} ({device}), {requests} requests of "
        f"{PREFLIGHT_FRAMES} frames in {time.monotonic() - started:.0f} s"
    )


def main(argv: Sequence[str] | None = None) -> int:
    # Whatever the checks print (library banners, native printf) goes to stderr: stdout carries one line.
    sys.stdout.flush()
    line_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    try:
        line = preflight(sys.argv[1:] if argv is None else argv)
    except PreflightFailed as failure:
        print(f"preflight FAILED: {failure}", file=line_out, flush=True)
        return EXIT_FAILED
    print(line, file=line_out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
