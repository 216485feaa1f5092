"""Hand a local checkpoint to wavhost (a third-party OpenAI-compatible server, docs/dialects.md) through
its own `pull`: wavhost downloads a model's files from the hub into content-addressed blobs and resumes a
broken pull from a pull-state file that names each file's blob. Writing those blobs and that state from a
local directory lets `wavhost pull` finish without a download, then build its checkpoint and manifest as
usual.

The layout is wavhost 0.2.2's (wavhost/config.py, wavhost/storage.py): blobs at
`<home>/.wavhost/models/blobs/sha256-<hex>`, the state at
`<home>/.wavhost/models/pull-state/<namespace>__<model>.json` as {"layers": {filename: {"digest": hex}}}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

# wavhost 0.2.2's model for Qwen3-TTS-12Hz-0.6B-Base voice cloning, and the files its registry lists for it
# (wavhost/registry.py QWEN_FILES); our synthetic checkpoints hold exactly these, plus a marker it ignores.
MODEL = "qwen-0.6-base"
NAMESPACE = "qwen"
FILES = (
    "config.json",
    "generation_config.json",
    "merges.txt",
    "model.safetensors",
    "preprocessor_config.json",
    "tokenizer_config.json",
    "vocab.json",
    "speech_tokenizer/config.json",
    "speech_tokenizer/configuration.json",
    "speech_tokenizer/model.safetensors",
    "speech_tokenizer/preprocessor_config.json",
)


def greedy_copy(checkpoint: Path, target: Path, max_frames: int) -> Path:
    """A copy of `checkpoint` whose generation_config.json decodes greedily for `max_frames` frames.

    wavhost's request has no frame budget, seed or sampling fields: it calls generate_voice_clone with the
    checkpoint's generation defaults (sampling, 8192 frames), so the checkpoint's own config is the only place
    a run that the reference can repeat is set. The weights are the same files."""
    shutil.copytree(checkpoint, target)
    config_path = target / "generation_config.json"
    config = json.loads(config_path.read_text())
    config.update(do_sample=False, subtalker_dosample=False, max_new_tokens=max_frames)
    config_path.write_text(json.dumps(config, indent=2))
    return target


def seed_store(checkpoint: Path, home: Path) -> None:
    """Put every file of `checkpoint` that wavhost pulls into `home`'s wavhost store, as a pull to resume."""
    models = home / ".wavhost" / "models"
    blobs = models / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    layers = {}
    for name in FILES:
        source = checkpoint / name
        if not source.is_file():
            raise FileNotFoundError(f"{checkpoint} has no {name}: not a Qwen3-TTS checkpoint directory")
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        shutil.copyfile(source, blobs / f"sha256-{digest}")
        layers[name] = {"filename": name, "digest": digest}
    state = models / "pull-state" / f"{NAMESPACE}__{MODEL}.json"
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({"layers": layers}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description="seed a wavhost store with a local checkpoint (greedy copy)")
    parser.add_argument("checkpoint", type=Path, help="a Qwen3-TTS checkpoint directory")
    parser.add_argument("home", type=Path, help="the HOME whose .wavhost store wavhost will use")
    parser.add_argument("--frames", type=int, required=True, help="max_new_tokens of the greedy copy")
    args = parser.parse_args()
    copy = greedy_copy(args.checkpoint, args.home / f"checkpoint-greedy-{args.frames}", args.frames)
    seed_store(copy, args.home)
    print(f"seeded {args.home / '.wavhost'} from {copy}; now: HOME={args.home} wavhost pull {MODEL}")


if __name__ == "__main__":
    main()
