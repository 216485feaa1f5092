"""Shared test setup: an isolated checkpoint cache and notebook scratch directory, the hub offline, and the
tiny reference loaded once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Tests never reach the network: the official loader must work from local files alone.
os.environ["HF_HUB_OFFLINE"] = "1"


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
