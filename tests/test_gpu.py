"""CUDA paths of the reference pipeline; run on a GPU machine with `pytest -m gpu`."""

from __future__ import annotations

import pytest
import torch

from qtts_eval.fixtures import load_fixtures
from qtts_eval.measure import measure
from qtts_eval.pipelines.base import CloneMode, PipelineConfig, Request
from qtts_eval.pipelines.reference import ReferencePipeline

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda_reference() -> ReferencePipeline:
    if not torch.cuda.is_available():
        pytest.fail("marked gpu but no CUDA device is visible; deselect with -m 'not gpu' on CPU machines")
    pipeline = ReferencePipeline(PipelineConfig(model="tiny", device="cuda:0", dtype="bfloat16"))
    pipeline.load()
    return pipeline


def test_cuda_greedy_runs_agree_and_report_cuda_memory(cuda_reference: ReferencePipeline) -> None:
    voice = load_fixtures().voice("slt")
    request = Request.for_voice(voice, "Hello from the GPU.", "english", CloneMode.ICL, max_frames=16, seed=0)
    first = measure(cuda_reference, request)
    second = measure(cuda_reference, request)
    assert first.end.frames_generated == second.end.frames_generated > 0
    assert first.audio.tobytes() == second.audio.tobytes()
    assert first.memory.kind == "cuda_allocated" and first.memory.peak_bytes > 0
    assert first.memory.reserved_bytes is not None and first.memory.reserved_bytes >= first.memory.peak_bytes
    assert cuda_reference.describe()["device_name"] == torch.cuda.get_device_name(0)  # the card actually used
