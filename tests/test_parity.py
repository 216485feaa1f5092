"""Parity: the reference against itself, planted faults caught at their stage, bf16 vs fp32, reports."""

from __future__ import annotations

import base64
import dataclasses
import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from qtts_eval import fixtures
from qtts_eval.errors import ParityError
from qtts_eval.parity.capture import HookedReference
from qtts_eval.parity.compare import Status, compare_dumps
from qtts_eval.parity.dumps import StageDump, read_dump, write_dump
from qtts_eval.parity.faults import FAULTS
from qtts_eval.parity.profiles import profile_for
from qtts_eval.parity.report import write_reports
from qtts_eval.parity.run import ParityResult, compare_pipeline, reference_dump
from qtts_eval.pipelines.base import CloneMode, PipelineConfig, Request, Sampling

CLIP_SAMPLES = 30_000  # 1.25 s of the fixture clip: enough codec frames, fast on 2 cores
FRAMES = 6  # frame budget


@pytest.fixture(scope="module")
def request_() -> Request:
    voice = fixtures.load_fixtures().voice("slt")
    audio, _ = fixtures.read_reference_audio(voice.ref_wav)
    return Request(
        text="Hello there.",
        language="english",
        ref_audio=audio[:CLIP_SAMPLES],
        ref_text=voice.ref_text,
        mode=CloneMode.ICL,
        max_frames=FRAMES,
        seed=0,
        sampling=Sampling(repetition_penalty=1.0),
    )


@pytest.fixture(scope="module")
def reference() -> HookedReference:
    pipeline = HookedReference(PipelineConfig(model="tiny"))
    pipeline.load()
    return pipeline


@pytest.fixture(scope="module")
def ref_dump(reference: HookedReference, request_: Request) -> StageDump:
    return reference_dump(reference, request_)  # raises unless two runs are bit-identical


@pytest.fixture(scope="module")
def bf16_result(
    ref_dump: StageDump, request_: Request, tmp_path_factory: pytest.TempPathFactory
) -> ParityResult:
    candidate = HookedReference(PipelineConfig(model="tiny", dtype="bfloat16"))
    candidate.load()
    out = tmp_path_factory.mktemp("bf16")
    return compare_pipeline(
        ref_dump, candidate, request_, profile_for("bfloat16"), "reference-bf16", dump_dir=out
    )


def test_capture_covers_every_stage_and_logits_explain_codes(ref_dump: StageDump) -> None:
    tensors = ref_dump.tensors
    for key in ("spk.mel", "spk.embedding", "codec_enc.codes", "talker.prefill.layer.01", "codec_dec.wav"):
        assert key in tensors
    codes = tensors["codes"]
    assert codes.shape == (FRAMES - 1, 16)  # a capped run returns budget - 1 frames
    cp = tensors["code_predictor.logits"]
    assert np.array_equal(cp.argmax(-1), codes[:, 1:])  # greedy picks from exactly the captured logits
    talker = tensors["talker.logits"][: len(codes), : cp.shape[-1]]
    assert np.array_equal(talker.argmax(-1), codes[:, 0])


def test_reference_against_itself_passes_with_zero_difference(
    reference: HookedReference, ref_dump: StageDump, request_: Request
) -> None:
    again = reference.capture(request_)
    comparison = compare_dumps(ref_dump, again, profile_for("fp32"))
    assert comparison.passed
    assert not comparison.divergences
    for stage in comparison.stages:
        assert stage.status in (Status.PASS, Status.INFO), stage
        assert stage.metrics.get("rel_l2", 0.0) == 0.0


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_planted_fault_is_caught_at_its_stage(
    name: str, ref_dump: StageDump, request_: Request, tmp_path: Path
) -> None:
    fault = FAULTS[name]()
    candidate = HookedReference(PipelineConfig(model="tiny"), fault=fault)
    candidate.load()
    result = compare_pipeline(
        ref_dump, candidate, request_, profile_for("fp32"), name, teacher_forcing=False, dump_dir=tmp_path
    )
    first = result.free.first_failure
    assert first is not None, f"{name} was not caught"
    assert first.group == fault.group, f"{name} caught at {first.key}, expected group {fault.group}"


@pytest.mark.slow
def test_bf16_passes_bf16_profile_and_fails_fp32(bf16_result: ParityResult) -> None:
    assert bf16_result.passed, [s for s in bf16_result.free.stages if s.status is Status.FAIL]
    assert bf16_result.forced is not None
    forced_codes = next(s for s in bf16_result.forced.stages if s.key == "codes")
    assert forced_codes.status is Status.PASS  # teacher forcing was followed
    strict = compare_dumps(bf16_result.reference, bf16_result.free_dump, profile_for("fp32"))
    assert not strict.passed
    assert strict.first_failure is not None and strict.first_failure.group == "speaker_encoder"
    for divergence in bf16_result.free.divergences:  # any flip bf16 makes here is a near tie
        assert divergence.kind.value == "near_tie"


def test_teacher_forcing_shows_talker_fault_downstream(
    ref_dump: StageDump, request_: Request, tmp_path: Path
) -> None:
    candidate = HookedReference(PipelineConfig(model="tiny"), fault=FAULTS["talker-weight"]())
    candidate.load()
    result = compare_pipeline(ref_dump, candidate, request_, profile_for("fp32"), "w", dump_dir=tmp_path)
    assert result.forced is not None
    by_key = {s.key: s for s in result.forced.stages}
    assert by_key["codes"].status is Status.PASS  # forced codes followed
    assert by_key["talker.prefill.layer.00"].status is Status.PASS
    assert by_key["talker.prefill.layer.01"].status is Status.FAIL
    assert by_key["codec_dec.wav"].status is Status.PASS  # same codes, untouched decoder


def test_mismatched_prompt_layout_is_refused(ref_dump: StageDump) -> None:
    other = StageDump(
        meta=dataclasses.replace(ref_dump.meta, non_streaming_mode=True), tensors=ref_dump.tensors
    )
    with pytest.raises(ParityError, match="non_streaming_mode"):
        compare_dumps(ref_dump, other, profile_for("fp32"))


def test_dump_round_trip_and_bad_files(ref_dump: StageDump, tmp_path: Path) -> None:
    path = write_dump(ref_dump, tmp_path / "ref.safetensors")
    back = read_dump(path)
    assert back.meta == ref_dump.meta
    assert set(back.tensors) == set(ref_dump.tensors)
    assert np.array_equal(back.tensors["codes"], ref_dump.tensors["codes"])
    from safetensors.numpy import save_file

    save_file({"codes": np.zeros((2, 16), np.int64)}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(ParityError, match="metadata header"):
        read_dump(tmp_path / "bare.safetensors")
    with pytest.raises(ParityError, match="not in the parity key schema"):
        write_dump(
            StageDump(meta=ref_dump.meta, tensors={"talker.layer7": np.zeros(3)}), tmp_path / "x.safetensors"
        )


def test_unknown_profile_is_refused() -> None:
    with pytest.raises(ParityError, match="known: "):
        profile_for("float8_e9")


def _data_uris(html: str, mime: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(rf"data:{mime};base64,([A-Za-z0-9+/=]+)", html)]


@pytest.mark.slow
def test_html_report_is_self_contained(bf16_result: ParityResult, tmp_path: Path) -> None:
    paths = write_reports(bf16_result, tmp_path)
    html = paths["html"].read_text(encoding="utf-8")
    assert "Verdict: PASS" in html
    assert not re.search(r"(src|href)=['\"]https?:", html)  # no external assets
    images = _data_uris(html, "image/png")
    assert len(images) == 4 and all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in images)
    clips = _data_uris(html, "audio/wav")
    assert html.count("<audio") == 2 and len(clips) == 2
    for clip in clips:
        samples, rate = sf.read(io.BytesIO(clip))
        assert rate == 24_000 and len(samples) > 0
    assert "Verdict: PASS" in paths["md"].read_text(encoding="utf-8")
    import json

    data: dict[str, Any] = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert data["verdict"] == "pass" and data["comparisons"][0]["mode"] == "free"
