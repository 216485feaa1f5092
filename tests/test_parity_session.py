"""A parity session's plumbing: the worker is handed the reference's checkpoint, and the dumps the suite
writes are complete enough to compare again on their own."""

from __future__ import annotations

from pathlib import Path

import pytest

from qtts_eval.parity.dumps import read_dump
from qtts_eval.parity.session import FREE_DUMP, _candidate_pipeline, run_session
from qtts_eval.pipelines.base import PipelineConfig


def test_a_worker_candidate_is_handed_the_reference_model_and_a_stderr_file(tmp_path: Path) -> None:
    log = tmp_path / "candidate.stderr.log"
    pipeline, _ = _candidate_pipeline(
        "my-port --weights {model_dir}", PipelineConfig(model="0.6b-base"), None, {}, log
    )
    assert pipeline.config.model == "0.6b-base"  # what {model_dir} becomes when the worker starts
    assert pipeline.options.stderr_log == str(log)
    reference, _ = _candidate_pipeline("reference", PipelineConfig(), None, {}, log)
    assert "stderr_log" not in reference.config.options  # in-process: no stderr of its own


@pytest.mark.slow  # two tiny parity sessions: about 100 s on the loaded 2-core VM
def test_the_suites_candidate_dumps_name_their_voice(tmp_path: Path) -> None:
    first = run_session("reference", tmp_path / "run", {"max_frames": 3}, forced_inputs=())
    assert first.passed
    dump = tmp_path / "run" / FREE_DUMP
    assert read_dump(dump).meta.voice == "slt"
    again = run_session(str(dump), tmp_path / "again")  # no --voice: the header says it
    assert again.passed
