"""Suite-side pipelines for installed candidates: the worker pipeline, with the command built for the port.

``--pipeline qwentts-cpp`` resolves the model ref like any pipeline, exports the weights into the format the
port loads (cached by the source checkpoint's weights hash and the storage type), and starts the worker shim
in the candidate's own environment. The candidate then runs behind the stdio protocol in its own process;
the harness times it with the one clock, exactly as any external worker.

Parity: a candidate whose adapter can write stage dumps is asked for one by a one-shot run of the shim
(``--dump-request``), so ``qtts-eval parity NAME`` works without extending the wire protocol.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from qtts_eval import checkpoints
from qtts_eval.candidates import crates, envs
from qtts_eval.candidates.export import GgufType, export_gguf, export_key
from qtts_eval.candidates.registry import Candidate, WeightFormat, candidate
from qtts_eval.candidates.shim import REF_AUDIO_FILE, request_fields
from qtts_eval.errors import PipelineError
from qtts_eval.parity.dumps import read_dump
from qtts_eval.pipelines.base import (
    Capability,
    ForcedInputs,
    PipelineConfig,
    Request,
    UnsupportedRequest,
)
from qtts_eval.wire.client import Channel, WorkerChannel
from qtts_eval.wire.pipelines import ProcessOptions, RemotePipeline

EXPORT_MARKER = "export.json"  # written last, in the staging directory renamed into place


@dataclass(frozen=True)
class CandidateOptions(ProcessOptions):
    """Options of an installed candidate (and the wire options of every worker)."""

    storage: str = GgufType.F32.value  # weight storage the port loads: F32, BF16 or Q8_0 (GGUF ports)
    # CPU threads the port may use. None: as many as the reference's torch uses in this process (like for
    # like); 0: the port's own default.
    threads: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.storage not in {t.value for t in GgufType}:
            raise ValueError(f"storage {self.storage!r} is not one of {', '.join(t.value for t in GgufType)}")
        if self.threads is not None and self.threads < 0:
            raise ValueError("threads must be >= 0")

    def port_threads(self) -> int:
        """The thread count handed to the port."""
        if self.threads is not None:
            return self.threads
        import torch

        return torch.get_num_threads()


def exported_weights(model: checkpoints.ResolvedModel, storage: GgufType) -> tuple[Path, Path]:
    """Talker and codec GGUF files for a resolved model, exported once per export key (weights, tokenizer and
    config files) and storage type."""
    target = export_dir(export_key(model.path, model.weights_hash), storage)
    marker = target / EXPORT_MARKER
    if not marker.is_file():
        staging = checkpoints.staging_dir(target)
        try:
            done = export_gguf(model.path, staging, storage)
            (staging / EXPORT_MARKER).write_text(
                json.dumps({"talker": done.talker.name, "codec": done.codec.name, "source": str(model.path)})
            )
            try:
                staging.rename(target)
            except OSError:
                if not marker.is_file():  # lost a race to a concurrent export: theirs is fine
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    files = json.loads(marker.read_text())
    return target / files["talker"], target / files["codec"]


def export_dir(key: str, storage: GgufType) -> Path:
    """Where the export cache keeps the files of one export key and storage type."""
    return checkpoints.cache_root() / "exports" / f"{key}-{storage.value}"


class CandidatePipeline(RemotePipeline):
    """A port from the candidate registry, run by the worker shim in its isolated environment."""

    candidate_name: ClassVar[str]
    transport = "worker"
    options_schema = CandidateOptions
    options: CandidateOptions

    def __init__(self, config: PipelineConfig) -> None:
        super().__init__(config)
        self.spec: Candidate = candidate(self.candidate_name)
        self.model: checkpoints.ResolvedModel | None = None
        self.adapter_config: dict[str, Any] = {}

    def prepare(self) -> None:
        """Check the environment, resolve the model and export its weights; no process is started."""
        if envs.env_python(self.spec.name).exists():
            envs.link_suite(self.spec.name)  # the environment may have been installed by another checkout
        problems = envs.missing(self.spec.name)
        if problems:
            raise PipelineError(f"candidate {self.spec.name!r} is not ready: " + "; ".join(problems))
        self.model = checkpoints.resolve(self.config.model)
        adapter_options: dict[str, Any] = {
            "weights_hash": self.model.weights_hash,
            "synthetic": self.model.synthetic,
            "model_ref": self.config.model,
        }
        if self.spec.weights is WeightFormat.GGUF:
            storage = GgufType(self.options.storage)
            if storage.value not in self.spec.storages:
                raise PipelineError(
                    f"{self.spec.name} loads {', '.join(self.spec.storages)}, not {storage.value}"
                )
            talker, codec = exported_weights(self.model, storage)
            adapter_options.update(
                storage=storage.value,
                threads=self.options.port_threads(),
                talker=str(talker),
                codec=str(codec),
            )
        else:
            adapter_options["checkpoint"] = str(self.model.path)
        self.adapter_config = {**asdict(self.config), "options": adapter_options}

    def load(self) -> None:
        self.prepare()
        super().load()
        # Its stage dumps come from a one-shot shim run (write_stage_dump), not over the wire.
        self.capabilities = type(self).capabilities

    def command(self, *extra: str) -> list[str]:
        python = str(envs.env_python(self.spec.name))
        shim = [python, "-m", "qtts_eval.candidates.shim", "--candidate", self.spec.name]
        # Without the suite's PYTHONPATH: the candidate imports its own packages, qtts_eval via its link.
        return ["env", "-u", "PYTHONPATH", *shim, "--config", json.dumps(self.adapter_config), *extra]

    def open_channel(self) -> Channel:
        log = self.options.stderr_log
        return WorkerChannel(self.command(), Path(log) if log else None)

    @property
    def target(self) -> str:
        """As the user named it: the installed candidate's name (`--pipeline qwentts-cpp`)."""
        return self.spec.name

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(candidate=self.spec.name, storage=self.options.storage)
        if self.model is not None:
            info.update(weights_hash=self.model.weights_hash, synthetic=self.model.synthetic)
        return info

    def write_stage_dump(self, request: Request, path: Path, *, forced: ForcedInputs | None = None) -> Path:
        """A one-shot shim run writes the port's stage dump for `request` (free-running only).

        The streaming worker is stopped first: two loaded copies of a full-size port do not fit beside the
        reference in a small machine's memory. `load()` starts it again.
        """
        if forced is not None:
            raise UnsupportedRequest(f"{self.spec.name} cannot be teacher-forced")
        if not self.adapter_config:
            raise PipelineError(f"{self.spec.name}: write_stage_dump() called before load()")
        self.spec.prompt_layout(request)  # a layout the port cannot build is refused before anything stops
        self.close()
        with tempfile.TemporaryDirectory(prefix="qtts-dump-request-") as scratch:
            request_file = Path(scratch) / "request.json"
            np.save(Path(scratch) / REF_AUDIO_FILE, request.ref_audio)
            request_file.write_text(json.dumps(request_fields(request)))
            argv = self.command("--dump-request", str(request_file), "--dump-out", str(path))
            # Loading, then every frame within the message timeout: the same patience as over the wire.
            patience = self.options.start_timeout_s + request.max_frames * self.options.timeout_s
            done = subprocess.run(argv, capture_output=True, text=True, timeout=patience)
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-10:])
            raise PipelineError(f"{self.spec.name} dump run failed ({shlex.join(argv[:4])} ...):\n{tail}")
        read_dump(path)  # refuses a file that is not a stage dump here, not later in the comparison
        return path


class CrateCandidatePipeline(CandidatePipeline):
    """A cargo-built candidate (qtts_eval.candidates.crates): its binary speaks the wire protocol itself, so
    it declares its own capabilities in hello and writes its parity dumps over the wire, under its cache's
    dump directory (each in a fresh folder the harness moves out)."""

    def load(self) -> None:
        self.prepare()
        RemotePipeline.load(self)

    def command(self, *extra: str) -> list[str]:
        if self.model is None:
            raise PipelineError(f"{self.spec.name}: command() called before prepare()")
        argv = [str(crates.binary(self.spec)), "--checkpoint", str(self.model.path)]
        argv += ["--dump-dir", str(crates.dump_dir(self.spec)), "--threads", str(self.options.port_threads())]
        argv += ["--model-ref", self.config.model, *(["--synthetic"] if self.model.synthetic else []), *extra]
        return argv

    def write_stage_dump(self, request: Request, path: Path, *, forced: ForcedInputs | None = None) -> Path:
        return RemotePipeline.write_stage_dump(self, request, path, forced=forced)


class QwenTtsCandleCandidate(CrateCandidatePipeline):
    """qwen_tts (crates.io, Rust/candle) on CPU through ports/rust/qwen-tts-candle (docs/ports.md)."""

    candidate_name = "qwen-tts-candle"
    label = "qwen-tts-candle"


class QwenttsCppCandidate(CandidatePipeline):
    """qwentts.cpp on CPU (docs/ports.md)."""

    candidate_name = "qwentts-cpp"
    label = "qwentts-cpp"
    capabilities = frozenset({Capability.STAGE_DUMPS})


class FasterQwen3TtsCandidate(CandidatePipeline):
    """faster-qwen3-tts on a CUDA device (docs/ports.md; run by .ci/gpu/campaign.sh)."""

    candidate_name = "faster-qwen3-tts"
    label = "faster-qwen3-tts"
