"""Model refs: presets built into a content-addressed cache, local directories, hub ids."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from qtts_eval.checkpoints.build import BUILDER_VERSION, MARKER_FILE, build_checkpoint, weights_hash
from qtts_eval.checkpoints.presets import PRESETS, preset_by_name
from qtts_eval.checkpoints.tokenizer import TokenizerSource, tokenizer_source
from qtts_eval.errors import CheckpointError

DEFAULT_SEED = 0

# Files the official loader opens; a directory missing one is refused before loading.
REQUIRED_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "speech_tokenizer/config.json",
    "speech_tokenizer/preprocessor_config.json",
    "speech_tokenizer/model.safetensors",
)


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model ref points and what is known about its weights."""

    ref: str  # the ref as the user gave it
    path: Path  # local checkpoint directory handed to Qwen3TTSModel.from_pretrained
    synthetic: bool  # random weights built by this module
    weights_hash: str  # sha256 over the checkpoint's safetensors files (talker + speech tokenizer)
    preset: str | None = None  # synthetic preset name
    seed: int | None = None  # synthetic seed
    # Synthetic: the package whose BPE ranks built the text tokenizer. None for a checkpoint that brings its
    # own tokenizer files (real weights) or a synthetic one built before provenance was recorded.
    text_tokenizer: TokenizerSource | None = None


def cache_root() -> Path:
    env = os.environ.get("QTTS_EVAL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "qtts-eval"


# A directory being written is named after its target plus ".tmp<pid>" (and, from mkdtemp, a random tail),
# then renamed into place: `qtts-eval cache prune` removes one whose process is gone.
_STAGING = re.compile(r"\.tmp(?P<pid>\d+)(?:-[^/]*)?$")


def staging_dir(target: Path) -> Path:
    """A fresh, empty staging directory beside `target`, named for this process."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{target.name}.tmp{os.getpid()}-", dir=target.parent))


def staging_owner(path: Path) -> int | None:
    """The process id a staging directory's name records, or None when `path` is no staging directory."""
    match = _STAGING.search(path.name)
    return int(match["pid"]) if match else None


def cache_key(preset_name: str, seed: int) -> str:
    preset = preset_by_name(preset_name)
    spec = json.dumps(
        {
            "builder": BUILDER_VERSION,
            "preset": preset.__dict__,
            "seed": seed,
            "text_tokenizer": dataclasses.asdict(tokenizer_source()),
        },
        sort_keys=True,
        default=list,
    )
    return f"{preset_name}-seed{seed}-{hashlib.sha256(spec.encode()).hexdigest()[:16]}"


def synthetic_checkpoint(preset_name: str, seed: int = DEFAULT_SEED) -> Path:
    """Path of the cached synthetic checkpoint, building it first if needed."""
    target = cache_root() / "checkpoints" / cache_key(preset_name, seed)
    if (target / MARKER_FILE).is_file():
        return target
    staging = staging_dir(target)
    try:
        build_checkpoint(preset_name, seed, staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / MARKER_FILE).is_file():  # lost a race to a concurrent builder: theirs is fine
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


_PRESET_REF = re.compile(r"^(?P<preset>[\w.\-]+?)(?:@seed=(?P<seed>\d+))?$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")  # owner/name, as opposed to a filesystem path


def check_checkpoint_dir(path: Path) -> None:
    """Refuse a directory missing any file the official loader needs, naming the missing files."""
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} is missing {', '.join(missing)}; a Qwen3-TTS-12Hz checkpoint needs "
            f"{', '.join(REQUIRED_FILES)}"
        )


def _hub_snapshot(ref: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(ref, local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1"))
    except Exception as exc:
        raise CheckpointError(
            f"model ref {ref!r} is not a preset ({', '.join(PRESETS)}), not a local directory, and could not "
            f"be fetched from the hub: {exc}"
        ) from exc


def unbuilt_preset(ref: str) -> str | None:
    """The preset `ref` names when its checkpoint is not built yet (resolving would build it), else None."""
    match = _PRESET_REF.match(ref)
    if not (match and match["preset"] in PRESETS):
        return None
    seed = int(match["seed"]) if match["seed"] else DEFAULT_SEED
    built = cache_root() / "checkpoints" / cache_key(match["preset"], seed) / MARKER_FILE
    return None if built.is_file() else match["preset"]


def resolve(ref: str) -> ResolvedModel:
    """Turn a model ref into a local checkpoint directory, building or fetching it if needed."""
    match = _PRESET_REF.match(ref)
    if match and match["preset"] in PRESETS:
        seed = int(match["seed"]) if match["seed"] else DEFAULT_SEED
        path = synthetic_checkpoint(match["preset"], seed)
    elif Path(ref).expanduser().is_dir():
        path = Path(ref).expanduser().resolve()
    elif _HUB_ID.match(ref):
        path = _hub_snapshot(ref)
    else:
        raise CheckpointError(
            f"model ref {ref!r} is neither a preset ({', '.join(PRESETS)}), an existing directory, "
            "nor a hub id (owner/name)"
        )
    check_checkpoint_dir(path)
    marker = path / MARKER_FILE
    if marker.is_file():
        info = json.loads(marker.read_text())
        source = info.get("text_tokenizer")
        return ResolvedModel(
            ref,
            path,
            True,
            info["weights_hash"],
            info["preset"],
            info["seed"],
            TokenizerSource(**source) if source is not None else None,
        )
    return ResolvedModel(ref, path, False, weights_hash(path))
