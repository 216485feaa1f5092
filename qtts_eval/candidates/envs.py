"""Isolated candidate environments: one venv per port under the suite's cache, as asv builds one per project
(a port built by cargo gets its own directory there instead: qtts_eval.candidates.crates).

An environment holds the port's pinned requirements and the worker shim's few needs
(registry.SHIM_REQUIREMENTS), never torch or qwen-tts from the suite. The suite's own package is made
importable there by a `.pth` file naming a directory that holds only a link to the `qtts_eval` package, so
the shim runs the suite's current protocol code and nothing else of the suite's environment leaks in. A
manifest written last marks the environment complete; the pipeline registry lists a candidate as installed
only when its manifest exists.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

from qtts_eval.candidates import crates
from qtts_eval.candidates.registry import Candidate, Device, Support, candidate
from qtts_eval.errors import PipelineError
from qtts_eval.pipelines.installed import MANIFEST, Installed, candidates_root

SUITE_LINK_DIR = "suite"  # holds only a link to the qtts_eval package; named by the .pth file


def env_dir(name: str) -> Path:
    return candidates_root() / name


def env_python(name: str) -> Path:
    return env_dir(name) / "bin" / "python"


def isolated_env() -> dict[str, str]:
    """This environment minus PYTHONPATH: a candidate sees its own venv and the suite link only."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _run(argv: list[str], what: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, env=isolated_env())
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise PipelineError(f"{what} failed (exit {done.returncode}):\n{tail}")
    return done.stdout


def _site_packages(python: Path) -> Path:
    out = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], "venv probe")
    return Path(out.strip())


def install(name: str, *, extra_pip_args: tuple[str, ...] = (), log: Any = print) -> Installed:
    """Build (or rebuild) the environment of candidate `name`; returns its manifest."""
    spec = candidate(name)
    if spec.support is not Support.ADAPTER:
        raise PipelineError(
            f"candidate {name!r} is {spec.support.value}, not installable: " + "; ".join(spec.limits)
        )
    if spec.crate:
        return crates.install(spec, log=log)
    target = env_dir(name)
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    log(f"creating {target}")
    # The base interpreter, not this venv's: the candidate's environment inherits none of our packages.
    base_python = Path(sysconfig.get_config_var("BINDIR") or Path(sys.base_prefix) / "bin") / "python3"
    if not base_python.exists():
        base_python = Path(sys.executable)
    # GPU ports use the torch of the machine's image; CPU ports see nothing outside their venv.
    system = ["--system-site-packages"] if spec.device is Device.GPU else []
    _run([str(base_python), "-m", "venv", *system, str(target)], "creating the venv")
    python = env_python(name)
    if spec.device is Device.GPU and sys.prefix != sys.base_prefix:
        # --system-site-packages reaches the base interpreter's packages only; where the image's torch lives
        # in a venv (the GPU machine's python3 is one), that venv's own site directories are named too.
        image = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
        (_site_packages(python) / "qtts_eval_image.pth").write_text("".join(f"{path}\n" for path in image))
    requirements = spec.environment_requirements
    log(f"installing {' '.join(requirements)}")
    _run(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", *extra_pip_args, *requirements],
        "pip",
    )
    link_suite(name)
    (_site_packages(python) / "qtts_eval_suite.pth").write_text(f"{target / SUITE_LINK_DIR}\n")
    manifest = Installed(
        name=name,
        python=str(python),
        pipeline=f"qtts_eval.candidates.pipeline:{spec.pipeline_class}",
        requirements=requirements,
        versions=_versions(python),
        installed_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    _check_shim_imports(python, spec)
    (target / MANIFEST).write_text(json.dumps(manifest.__dict__, indent=2) + "\n")
    return manifest


def _versions(python: Path) -> dict[str, str]:
    listing = _run(
        [str(python), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"], "pip list"
    )
    return {entry["name"].lower(): entry["version"] for entry in json.loads(listing)}


def _check_shim_imports(python: Path, spec: Candidate) -> None:
    """Import the shim and the adapter module in the new environment, and insist torch stayed out."""
    module = spec.adapter.partition(":")[0]
    probe = (
        f"import sys, qtts_eval.candidates.shim, {module}; "
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'qwen_tts'}); "
        "sys.exit('shim imported ' + ', '.join(bad) if bad else 0)"
    )
    _run([str(python), "-c", probe], "importing the worker shim in the candidate environment")


def _suite_package() -> Path:
    return Path(__file__).resolve().parent.parent


def link_suite(name: str) -> None:
    """Point the environment's suite link at this checkout's `qtts_eval` (the shim imports it from there), so
    an environment in a cache shared by several checkouts runs the adapter code of the suite driving it."""
    link = env_dir(name) / SUITE_LINK_DIR / "qtts_eval"
    if link.is_symlink() and link.resolve() == _suite_package():
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    staging = link.with_name(f"qtts_eval.tmp{os.getpid()}")
    staging.unlink(missing_ok=True)
    staging.symlink_to(_suite_package(), target_is_directory=True)
    staging.replace(link)  # atomic: a concurrent reader sees the old link or the new one


def missing(name: str) -> list[str]:
    """What stands between `name` and `--pipeline name`, in words; empty when it is ready."""
    spec = candidate(name)
    if spec.support is not Support.ADAPTER:
        return [f"{name} is {spec.support.value}, not installable here: " + "; ".join(spec.limits)]
    if spec.crate:
        return crates.missing(spec)
    problems: list[str] = []
    target = env_dir(name)
    if not target.is_dir():
        return [f"no environment at {target}: run `qtts-eval candidates install {name}`"]
    if not (target / MANIFEST).is_file():
        problems.append(f"{target} has no {MANIFEST}: the install did not finish; run it again")
    if not env_python(name).exists():
        problems.append(f"{env_python(name)} is missing: the venv is broken; reinstall")
        return problems
    link = target / SUITE_LINK_DIR / "qtts_eval"
    if not link.exists() or link.resolve() != _suite_package():
        problems.append(
            f"{link} does not point at this checkout's package {_suite_package()}: any run re-points it "
            f"(or `qtts-eval candidates install {name}`)"
        )
    if not problems:
        try:
            _check_shim_imports(env_python(name), spec)
        except PipelineError as exc:
            problems.append(str(exc))
    return problems
