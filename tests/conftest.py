"""Shared test setup: an isolated checkpoint cache and notebook scratch directory, the hub offline, the tiny
reference loaded once, and how tests share the two pytest-xdist workers of the README's test command."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Tests never reach the network: the official loader must work from local files alone.
os.environ["HF_HUB_OFFLINE"] = "1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests not in a named group (tests/groups.py) are grouped by their file (`--dist loadgroup`): a
    module's fixtures (a served reference, a built run) are made once, on the worker that runs the file."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))


@pytest.fixture(scope="session", autouse=True)
def checkpoint_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh checkpoint cache per session, so the builder itself is exercised, not a stale copy."""
    cache = tmp_path_factory.mktemp("qtts-eval-cache")
    previous = os.environ.get("QTTS_EVAL_CACHE")
    os.environ["QTTS_EVAL_CACHE"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("QTTS_EVAL_CACHE", None)
    else:
        os.environ["QTTS_EVAL_CACHE"] = previous


@pytest.fixture(scope="session")
def notebook_scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The notebooks' demo data directory for this session (QTTS_EVAL_SCRATCH), shared by the notebook
    tests so the demo runs are built once; kernels and JupyterLab started by a test inherit it."""
    from qtts_eval.report import SCRATCH_ENV

    scratch = tmp_path_factory.mktemp("notebook-scratch")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SCRATCH_ENV, str(scratch))
        yield scratch


@pytest.fixture(scope="session")
def tiny_reference() -> object:
    """The official package on the tiny synthetic checkpoint, loaded once per session."""
    from qtts_eval.pipelines.base import PipelineConfig
    from qtts_eval.pipelines.reference import ReferencePipeline

    pipeline = ReferencePipeline(PipelineConfig(model="tiny"))
    pipeline.load()
    return pipeline


@pytest.fixture(scope="session")
def resemblyzer_embedder() -> object:
    """resemblyzer's VoiceEncoder with its bundled weights, loaded once per session."""
    from qtts_eval.metrics.speaker import ResemblyzerEmbedder

    return ResemblyzerEmbedder()
