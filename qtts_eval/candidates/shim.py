"""The worker shim: serves a port's adapter over stdin/stdout frames (docs/protocol.md) in its own venv.

Run as ``python -m qtts_eval.candidates.shim --candidate NAME --config JSON`` by the suite-side candidate
pipeline. Its import chain is the wire protocol and server (numpy, soundfile for the fixture helpers) plus the
adapter: never torch or qwen-tts, which the candidate's environment does not have (`envs.install` checks).
The stdio worker points fd 1 at stderr before the adapter loads, so a native library's printf cannot corrupt
the frame stream; the frames go out through a duplicate of the real stdout.

With ``--dump-request REQUEST.json --dump-out DUMP.safetensors`` it instead runs one request and writes the
adapter's parity stage dump (the reference clip travels beside the JSON as ref_audio.npy).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qtts_eval.candidates.registry import candidate
from qtts_eval.pipelines.base import CloneMode, Pipeline, PipelineConfig, Request, Sampling

REF_AUDIO_FILE = "ref_audio.npy"  # beside a dump request's JSON


def request_fields(request: Request) -> dict[str, Any]:
    """A Request as JSON for a one-shot dump run, without its reference clip."""
    fields = dataclasses.asdict(request)
    fields.pop("ref_audio")
    fields["mode"] = request.mode.value
    return fields


def request_from_file(path: Path) -> Request:
    fields = json.loads(path.read_text())
    fields.update(mode=CloneMode(fields["mode"]), sampling=Sampling(**fields["sampling"]))
    return Request(**fields, ref_audio=np.load(path.with_name(REF_AUDIO_FILE)))


def adapter_class(name: str) -> type[Pipeline]:
    module_name, _, class_name = candidate(name).adapter.partition(":")
    target = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(target, type) and issubclass(target, Pipeline)):
        raise TypeError(f"{candidate(name).adapter} is not a Pipeline")
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qtts_eval.candidates.shim", description=__doc__)
    parser.add_argument("--candidate", required=True, help="candidate name (qtts_eval.candidates.registry)")
    parser.add_argument("--config", required=True, help="PipelineConfig fields as a JSON object")
    parser.add_argument("--dump-request", type=Path, help="run this request once and write a stage dump")
    parser.add_argument("--dump-out", type=Path, help="where the stage dump goes (.safetensors)")
    args = parser.parse_args(argv)
    config = PipelineConfig(**json.loads(args.config))
    cls = adapter_class(args.candidate)
    if args.dump_request is not None:
        return write_stage_dump(cls(config), args.candidate, args.dump_request, args.dump_out)

    from qtts_eval.wire.server import Host, run_stdio_worker

    def load() -> Host:
        pipeline = cls(config)
        pipeline.load()
        return Host(pipeline, args.candidate)

    run_stdio_worker(load)
    return 0


def write_stage_dump(pipeline: Pipeline, name: str, request_path: Path, out: Path | None) -> int:
    from qtts_eval.parity.dumps import write_dump

    if out is None:
        raise SystemExit("--dump-out is required with --dump-request")
    stage_dump = getattr(pipeline, "stage_dump", None)
    if stage_dump is None:
        raise SystemExit(f"{name}: the adapter writes no stage dumps")
    request = request_from_file(request_path)
    pipeline.load()
    write_dump(stage_dump(request), out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
