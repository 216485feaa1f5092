"""Candidates built by cargo: a Rust adapter crate in this repository (ports/rust/NAME, on the port kit) whose
Cargo.lock pins the public port's crate, compiled into a worker binary that speaks docs/protocol.md itself.

`qtts-eval candidates install NAME` runs `cargo build --release --locked` with the candidate's own target
directory under `$QTTS_EVAL_CACHE/candidates/NAME/target`, kept between installs: the cold build of a candle
port is tens of minutes on a small machine, a rebuild after an adapter change seconds. The binary is copied
to `bin/` and the manifest written last, with the versions Cargo.lock pinned and a hash of the sources the
binary was built from (the adapter crate and the kit): a checkout whose adapter changed is told to reinstall.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qtts_eval.candidates.registry import Candidate
from qtts_eval.errors import PipelineError
from qtts_eval.pipelines.installed import MANIFEST, Installed, candidates_root

KIT = "ports/rust/qtts-port-kit"  # every adapter crate's path dependency: part of what its binary is built of
TARGET_DIR = "target"  # cargo's target directory inside the candidate's cache directory
DUMP_DIR = "dumps"  # where its worker writes parity dumps; the harness moves each one out
MIN_RUST = "1.88"  # the candle ports use let chains (edition 2024)


def repo_root() -> Path:
    """The checkout holding the suite's package, where the adapter crates live."""
    return Path(__file__).resolve().parent.parent.parent


def crate_dir(spec: Candidate) -> Path:
    return repo_root() / spec.crate


def binary(spec: Candidate) -> Path:
    """The installed worker binary."""
    return candidates_root() / spec.name / "bin" / Path(spec.crate).name


def dump_dir(spec: Candidate) -> Path:
    return candidates_root() / spec.name / DUMP_DIR


def _source_files(root: Path) -> Iterator[Path]:
    for name in ("Cargo.toml", "Cargo.lock"):
        if (root / name).is_file():
            yield root / name
    yield from sorted((root / "src").rglob("*.rs"))


def sources_hash(spec: Candidate) -> str:
    """SHA-256 over the adapter crate's and the kit's manifests and sources, each preceded by its path."""
    digest = hashlib.sha256()
    for root in (crate_dir(spec), repo_root() / KIT):
        for path in _source_files(root):
            digest.update(str(path.relative_to(repo_root())).encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()


def locked_versions(lock: Path) -> dict[str, str]:
    """Package name -> version, as a Cargo.lock pins them."""
    found = re.findall(r'^name = "([^"]+)"\nversion = "([^"]+)"', lock.read_text(), flags=re.MULTILINE)
    return dict(found)


def cargo() -> str:
    found = shutil.which("cargo")
    if found is None:
        raise PipelineError(
            f"cargo is not on PATH: this candidate is built from source (Rust >= {MIN_RUST}); install a Rust "
            "toolchain (https://rustup.rs) and run the install again"
        )
    return found


def install(spec: Candidate, *, log: Any = print) -> Installed:
    """Build the candidate's worker binary (incrementally, in its cached target dir), then its manifest."""
    source = crate_dir(spec)
    if not (source / "Cargo.toml").is_file():
        raise PipelineError(
            f"{spec.name}: its adapter crate {spec.crate} is not in this checkout ({source}); install from a "
            "clone of the repository"
        )
    target = candidates_root() / spec.name
    target.mkdir(parents=True, exist_ok=True)
    (target / MANIFEST).unlink(missing_ok=True)  # incomplete until the new one is written
    env = {**os.environ, "CARGO_TARGET_DIR": str(target / TARGET_DIR)}
    argv = [cargo(), "build", "--release", "--locked", "--manifest-path", str(source / "Cargo.toml")]
    log(f"building {spec.crate} into {target / TARGET_DIR} (a cold build compiles candle: tens of minutes)")
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-20:])
        raise PipelineError(f"cargo build of {spec.crate} failed (exit {done.returncode}):\n{tail}")
    built = target / TARGET_DIR / "release" / Path(spec.crate).name
    installed_binary = binary(spec)
    installed_binary.parent.mkdir(parents=True, exist_ok=True)
    staging = installed_binary.with_name(f"{installed_binary.name}.tmp{os.getpid()}")
    shutil.copy2(built, staging)
    staging.replace(installed_binary)  # atomic: a running worker keeps its old file
    pinned = locked_versions(source / "Cargo.lock")
    crate_name = Path(spec.crate).name
    manifest = Installed(
        name=spec.name,
        python="",
        pipeline=f"qtts_eval.candidates.pipeline:{spec.pipeline_class}",
        requirements=spec.environment_requirements,
        versions={
            **{r.partition("==")[0]: pinned.get(r.partition("==")[0], "?") for r in spec.requirements},
            crate_name: pinned.get(crate_name, "?"),
        },
        installed_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        binary=str(installed_binary),
        sources=sources_hash(spec),
    )
    (target / MANIFEST).write_text(json.dumps(manifest.__dict__, indent=2) + "\n")
    log(f"built in {time.monotonic() - started:.0f} s")
    return manifest


def missing(spec: Candidate) -> list[str]:
    """What stands between a cargo-built candidate and `--pipeline NAME`, in words; empty when it is ready."""
    target = candidates_root() / spec.name
    manifest = target / MANIFEST
    if not manifest.is_file():
        return [f"{spec.name} is not built (no {manifest}): run `qtts-eval candidates install {spec.name}`"]
    recorded = json.loads(manifest.read_text())
    if not binary(spec).is_file():
        return [f"{binary(spec)} is missing: run `qtts-eval candidates install {spec.name}`"]
    if (crate_dir(spec) / "Cargo.toml").is_file() and recorded.get("sources") != sources_hash(spec):
        return [
            f"{binary(spec)} was built from other sources than this checkout's {spec.crate} and {KIT}: run "
            f"`qtts-eval candidates install {spec.name}` (incremental)"
        ]
    return []
