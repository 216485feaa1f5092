"""Parity: the reference against itself, planted faults caught at their stage, bf16 vs fp32, reports; and
dumps written as a port writes them (stages removed, conventions of its own) judged without wrong blame."""

from __future__ import annotations

import base64
import dataclasses
import fnmatch
import io
import json
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from qtts_eval.cli import main
from qtts_eval.errors import ParityError
from qtts_eval.gates import GateInputs, GateSpec, Outcome, ParityGate, evaluate_gate
from qtts_eval.parity.capture import HookedReference
from qtts_eval.parity.compare import Evidence, FlipKind, Status, compare_dumps
from qtts_eval.parity.dumps import METADATA_KEY, StageDump, read_dump, write_dump
from qtts_eval.parity.faults import FAULTS
from qtts_eval.parity.profiles import Precision, precision_of, profile_for_precision, profile_named
from qtts_eval.parity.report import write_reports
from qtts_eval.parity.run import ParityResult, Verdict, compare, compare_pipeline, reference_dump
from qtts_eval.parity.session import DEFAULT_SETTINGS, resolve_settings
from qtts_eval.pipelines.base import ForcedInput, ForcedInputs, PipelineConfig, Request
from qtts_eval.units import SAMPLES_PER_FRAME

FRAMES = 6  # frame budget: a capped run returns 5 frames
SETTINGS = dataclasses.replace(DEFAULT_SETTINGS, max_frames=FRAMES)
# What a real ggml port's debug taps cover (REFERENCE-NOTES): no per-step logits, no decoder taps.
PORT_TAPS = (
    "inputs.*",
    "spk.*",
    "codec_enc.input",
    "codec_enc.latent",
    "codec_enc.rvq_in.*",
    "codec_enc.codes",
    "talker.prefill.*",
    "codes",
    "output.wav",
)
LOGITS = ("talker.logits", "code_predictor.logits")


@pytest.fixture(scope="module")
def request_() -> Request:
    return SETTINGS.request()


@pytest.fixture(scope="module")
def reference() -> HookedReference:
    pipeline = HookedReference(PipelineConfig(model=SETTINGS.model))
    pipeline.load()
    return pipeline


@pytest.fixture(scope="module")
def ref_dump(reference: HookedReference, request_: Request) -> StageDump:
    captured = reference_dump(reference, request_)  # raises unless two runs are bit-identical
    return StageDump(dataclasses.replace(captured.meta, voice=SETTINGS.voice), captured.tensors)


@pytest.fixture(scope="module")
def forced_self(reference: HookedReference, ref_dump: StageDump, request_: Request) -> StageDump:
    """The reference teacher-forced on every input from its own dump."""
    return reference.capture(request_, forced=ForcedInputs.from_tensors(ref_dump.tensors))


def port_dump(
    source: StageDump,
    taps: Collection[str] = PORT_TAPS,
    replace: dict[str, Any] | None = None,
    drop: Collection[str] = (),
    **meta: Any,
) -> StageDump:
    """`source` as a port would write it: only its taps (less `drop`), its own implementation name and
    header fields."""
    tensors = {
        k: v
        for k, v in source.tensors.items()
        if any(fnmatch.fnmatchcase(k, t) for t in taps) and k not in drop
    }
    tensors.update(replace or {})
    fields = {"implementation": "a-port 0.1", "voice": SETTINGS.voice, **meta}
    return StageDump(dataclasses.replace(source.meta, **fields), tensors)


@pytest.fixture(scope="module")
def bf16_result(
    ref_dump: StageDump, request_: Request, tmp_path_factory: pytest.TempPathFactory
) -> ParityResult:
    candidate = HookedReference(PipelineConfig(model="tiny", dtype="bfloat16"))
    candidate.load()
    out = tmp_path_factory.mktemp("bf16")
    profile = profile_for_precision("bfloat16", "float32")
    return compare_pipeline(ref_dump, candidate, request_, profile, "reference-bf16", dump_dir=out)


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
    clip = len(tensors["inputs.ref_audio"])  # the codec encoder rounds a partial last frame up
    assert len(tensors["codec_enc.codes"]) == -(-clip // SAMPLES_PER_FRAME)


def test_reference_side_loads_the_checkpoint_itself_without_a_copy(reference: HookedReference) -> None:
    # A parity session's reference side once copied the whole checkpoint (2.4 GB on 0.6b-base) before asking
    # the fault whether it edits anything. No fault, or one that edits no file, loads the checkpoint in place.
    from qtts_eval.parity.capture import fault_copy_dir

    assert reference.resolved is not None
    source = reference.resolved.path
    assert reference.checkpoint_dir(source) == source
    for name, fault in FAULTS.items():
        if not fault.edits_checkpoint:
            assert HookedReference(PipelineConfig(model="tiny"), fault()).checkpoint_dir(source) == source
            assert not fault_copy_dir(source, name).exists()
    assert not fault_copy_dir(source, "none").exists()
    editing = {name for name, fault in FAULTS.items() if fault.edits_checkpoint}
    assert editing == {"talker-weight", "rope-theta"}


def test_reference_against_itself_passes_with_zero_difference(
    reference: HookedReference, ref_dump: StageDump, request_: Request
) -> None:
    again = reference.capture(request_)
    comparison = compare_dumps(ref_dump, again, profile_named("fp32"))
    assert comparison.passed
    assert not comparison.divergences
    for stage in comparison.stages:
        assert stage.status in (Status.PASS, Status.INFO), stage
        assert stage.metrics.get("rel_l2", 0.0) == 0.0


@pytest.mark.parametrize("name", sorted(set(FAULTS) - {"decoder-no-window"}))  # that one: past frame 72
def test_planted_fault_is_caught_at_its_stage(
    name: str, ref_dump: StageDump, request_: Request, tmp_path: Path
) -> None:
    fault = FAULTS[name]()
    candidate = HookedReference(PipelineConfig(model="tiny"), fault=fault)
    candidate.load()
    result = compare_pipeline(
        ref_dump, candidate, request_, profile_named("fp32"), name, forced_inputs=(), dump_dir=tmp_path
    )
    first = result.free.first_failure
    assert first is not None, f"{name} was not caught"
    assert first.group == fault.group, f"{name} caught at {first.key}, expected group {fault.group}"
    assert result.verdict is Verdict.FAIL


def test_default_icl_parity_finds_a_decoder_without_its_sliding_window(tmp_path: Path) -> None:
    assert main(["parity", "fault:decoder-no-window", "--out", str(tmp_path)]) == 1  # the default request
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["first_failing_stage"]["group"] == "codec_decoder"
    assert "from decoder frame 72" in report["verdict_line"], report["verdict_line"]
    assert "from decoder frame 72" in (tmp_path / "report.md").read_text()
    assert "sliding attention window" in report["check_next"]["codec_decoder"]  # the hint names the cause
    assert "codec decoder first" in report["check_next"]["output"]  # not the ICL cut: the decoder differs


@pytest.mark.slow
def test_bf16_passes_bf16_profile_and_fails_fp32(bf16_result: ParityResult) -> None:
    assert bf16_result.verdict is Verdict.PASS, bf16_result.verdict_line()
    assert bf16_result.forced is not None
    forced_codes = bf16_result.forced.stage("codes")
    assert forced_codes is not None and forced_codes.status is Status.PASS  # teacher forcing was followed
    strict = compare_dumps(bf16_result.reference, bf16_result.free_dump, profile_named("fp32"))
    assert not strict.passed
    assert strict.first_failure is not None and strict.first_failure.group == "speaker_encoder"
    for divergence in bf16_result.free.divergences:  # any flip bf16 makes here is a near tie
        assert divergence.kind is FlipKind.NEAR_TIE


def test_teacher_forcing_shows_talker_fault_downstream(
    ref_dump: StageDump, request_: Request, tmp_path: Path
) -> None:
    candidate = HookedReference(PipelineConfig(model="tiny"), fault=FAULTS["talker-weight"]())
    candidate.load()
    result = compare_pipeline(ref_dump, candidate, request_, profile_named("fp32"), "w", dump_dir=tmp_path)
    assert result.forced is not None
    assert result.forced.forced == tuple(ForcedInput)
    by_key = {s.key: s for s in result.forced.stages}
    assert by_key["codes"].status is Status.PASS  # forced codes followed
    assert by_key["talker.prefill.layer.00"].status is Status.PASS
    assert by_key["talker.prefill.layer.01"].status is Status.FAIL
    assert by_key["codec_dec.wav"].status is Status.PASS  # same codes, untouched decoder


def test_partial_teacher_forcing_is_recorded_and_compares_codes_freely(
    reference: HookedReference, ref_dump: StageDump, request_: Request, tmp_path: Path
) -> None:
    inputs = (ForcedInput.SPK_EMBEDDING, ForcedInput.REF_CODES)
    dump = reference.write_stage_dump(
        request_, tmp_path / "partial.safetensors", forced=ForcedInputs.from_tensors(ref_dump.tensors, inputs)
    )
    assert read_dump(tmp_path / "partial.safetensors").meta.forced == inputs
    comparison = compare_dumps(ref_dump, dump, profile_named("fp32"))
    assert comparison.mode == "forced" and comparison.passed
    codes = comparison.stage("codes")
    assert codes is not None and codes.status is Status.PASS and "not followed" not in codes.note


def _smallest_margin(ref_dump: StageDump) -> tuple[int, int, int]:
    """(frame, codebook, runner-up code) of the code-predictor decision with the smallest margin."""
    logits = ref_dump.tensors["code_predictor.logits"]
    top2 = np.sort(logits, -1)[..., -2:]
    frame, step = np.unravel_index(np.argmin(top2[..., 1] - top2[..., 0]), top2.shape[:2])
    return int(frame), int(step) + 1, int(np.argsort(logits[frame, step])[-2])


def _flipped(ref_dump: StageDump, frame: int, codebook: int, code: int) -> dict[str, Any]:
    codes = ref_dump.tensors["codes"].copy()
    codes[frame, codebook] = code
    return {"codes": codes}


def test_near_tie_without_logits_is_unclassified_never_real(ref_dump: StageDump) -> None:
    frame, codebook, runner_up = _smallest_margin(ref_dump)
    port = port_dump(ref_dump, replace=_flipped(ref_dump, frame, codebook, runner_up), dtype="BF16")
    result = compare("port", profile_for_precision("BF16", "F32"), ref_dump, port, None)
    (divergence,) = result.free.divergences
    assert (divergence.frame, divergence.codebook) == (frame, codebook)
    assert divergence.kind is FlipKind.UNCLASSIFIED and divergence.evidence is Evidence.NONE
    codes = result.free.stage("codes")
    assert codes is not None and codes.status is Status.UNCLASSIFIED
    assert result.verdict is Verdict.UNCLASSIFIED
    assert result.verdict_line().startswith("UNCLASSIFIED on ")
    assert "code_predictor.logits" in result.missing_taps()


def test_forced_run_without_logits_leaves_a_flip_unclassified(
    ref_dump: StageDump, forced_self: StageDump
) -> None:
    frame, codebook, runner_up = _smallest_margin(ref_dump)
    port = port_dump(ref_dump, replace=_flipped(ref_dump, frame, codebook, runner_up), dtype="BF16")
    forced = port_dump(forced_self, dtype="BF16")  # forced codes equal the reference's by construction
    result = compare("port", profile_named("bf16"), ref_dump, port, forced)
    (divergence,) = result.free.divergences
    assert divergence.kind is FlipKind.UNCLASSIFIED and divergence.evidence is Evidence.NONE
    assert result.verdict is Verdict.UNCLASSIFIED, result.verdict_line()
    assert "code_predictor.logits" in result.missing_taps()  # absent from both runs
    with_logits = port_dump(forced_self, taps=(*PORT_TAPS, *LOGITS), dtype="BF16")
    evidenced = compare("port", profile_named("bf16"), ref_dump, port, with_logits)
    assert "code_predictor.logits" not in evidenced.missing_taps()  # the forced run dumped it


def test_xvector_coverage_counts_only_the_stages_it_uses(ref_dump: StageDump) -> None:
    xvector = StageDump(dataclasses.replace(ref_dump.meta, clone_mode="xvector"), ref_dump.tensors)
    coverage = compare("port", profile_named("fp32"), xvector, port_dump(xvector), None).coverage
    assert not [k for k in (*coverage.compared, *coverage.not_covered) if k.startswith("codec_enc.")]
    assert "inputs.ref_text_ids" not in coverage.not_covered


def test_near_tie_is_classified_by_the_forced_runs_logits(
    ref_dump: StageDump, forced_self: StageDump
) -> None:
    frame, codebook, runner_up = _smallest_margin(ref_dump)
    logits = forced_self.tensors["code_predictor.logits"]
    margin = float(np.diff(np.sort(logits[frame, codebook - 1])[-2:])[0])
    noisy = logits + np.random.default_rng(0).uniform(-margin, margin, logits.shape).astype(np.float32)
    noisy[frame, codebook - 1, runner_up] = noisy[frame, codebook - 1].max() + margin / 10  # picks it
    port = port_dump(ref_dump, replace=_flipped(ref_dump, frame, codebook, runner_up), dtype="BF16")
    forced = port_dump(forced_self, taps=(*PORT_TAPS, *LOGITS), replace={"code_predictor.logits": noisy})
    result = compare("port", profile_named("bf16"), ref_dump, port, forced)
    divergence = result.free.divergences[0]
    assert divergence.kind is FlipKind.NEAR_TIE and divergence.evidence is Evidence.FORCED_RUN
    assert divergence.candidate_error is not None and divergence.candidate_error >= margin


def test_code_predictor_flip_is_not_bounded_by_talker_logits(ref_dump: StageDump) -> None:
    frame, codebook, runner_up = _smallest_margin(ref_dump)
    margin = float(np.diff(np.sort(ref_dump.tensors["code_predictor.logits"][frame, codebook - 1])[-2:])[0])
    talker = ref_dump.tensors["talker.logits"].copy()
    talker[0, 0] += margin  # a talker error as large as the margin says nothing about the code predictor
    replace = {**_flipped(ref_dump, frame, codebook, runner_up), "talker.logits": talker}
    port = port_dump(ref_dump, taps=(*PORT_TAPS, "talker.logits"), replace=replace, dtype="BF16")
    (divergence,) = compare_dumps(ref_dump, port, profile_named("bf16")).divergences
    assert divergence.kind is FlipKind.UNCLASSIFIED and divergence.evidence is Evidence.NONE


def _largest_margin_flip(ref_dump: StageDump) -> tuple[int, int, int]:
    logits = ref_dump.tensors["code_predictor.logits"]
    top2 = np.sort(logits, -1)[..., -2:]
    frame, step = np.unravel_index(np.argmax(top2[..., 1] - top2[..., 0]), top2.shape[:2])
    return int(frame), int(step) + 1, int(np.argsort(logits[frame, step])[-2])


def test_logits_picking_the_references_code_are_a_decision_rule_difference(ref_dump: StageDump) -> None:
    frame, codebook, runner_up = _largest_margin_flip(ref_dump)
    replace = _flipped(ref_dump, frame, codebook, runner_up)
    without = compare_dumps(ref_dump, port_dump(ref_dump, replace=replace), profile_named("bf16"))
    assert without.divergences[0].kind is FlipKind.UNCLASSIFIED  # a large margin alone is no evidence
    port = port_dump(ref_dump, taps=(*PORT_TAPS, *LOGITS), replace=replace)  # exact logits, another code
    comparison = compare_dumps(ref_dump, port, profile_named("bf16"))
    (divergence,) = comparison.divergences
    assert divergence.kind is FlipKind.DECISION_RULE and divergence.evidence is Evidence.CANDIDATE_LOGITS
    assert divergence.replayed_code == divergence.reference_code != divergence.candidate_code
    codes = comparison.stage("codes")
    assert codes is not None and codes.status is Status.FAIL and "decision-rule difference" in codes.note


def test_real_disagreement_needs_logits_that_reproduce_the_code(ref_dump: StageDump) -> None:
    frame, codebook, runner_up = _largest_margin_flip(ref_dump)
    logits = ref_dump.tensors["code_predictor.logits"].copy()
    logits[frame, codebook - 1, runner_up] = logits[frame, codebook - 1].max() + 1.0  # they pick the flip
    replace = {**_flipped(ref_dump, frame, codebook, runner_up), "code_predictor.logits": logits}
    port = port_dump(ref_dump, taps=(*PORT_TAPS, *LOGITS), replace=replace)
    (divergence,) = compare_dumps(ref_dump, port, profile_named("bf16")).divergences
    assert divergence.kind is FlipKind.REAL and divergence.evidence is Evidence.CANDIDATE_LOGITS
    assert divergence.candidate_error is not None and divergence.reference_margin > divergence.candidate_error


def test_flip_after_an_upstream_failure_is_inherited(ref_dump: StageDump) -> None:
    frame, codebook, runner_up = _smallest_margin(ref_dump)
    layer = ref_dump.tensors["talker.prefill.layer.01"] * 1.1  # past bf16's 3 % rel_l2
    replace = {**_flipped(ref_dump, frame, codebook, runner_up), "talker.prefill.layer.01": layer}
    result = compare("port", profile_named("bf16"), ref_dump, port_dump(ref_dump, replace=replace), None)
    (divergence,) = result.free.divergences
    assert divergence.kind is FlipKind.INHERITED and divergence.inherited_from == "talker.prefill.layer.01"
    codes = result.free.stage("codes")
    assert codes is not None and codes.status is Status.INHERITED
    assert result.verdict is Verdict.FAIL
    assert result.verdict_line().startswith("FAIL at talker.prefill.layer.01")


def test_codec_encoder_flip_without_rvq_input_is_unclassified(ref_dump: StageDump) -> None:
    margins = ref_dump.tensors["codec_enc.margin"]
    frame, codebook = np.unravel_index(np.argmin(margins), margins.shape)
    codes = ref_dump.tensors["codec_enc.codes"].copy()
    codes[frame, codebook] = (codes[frame, codebook] + 1) % 2048
    taps = [t for t in PORT_TAPS if t != "codec_enc.rvq_in.*"]
    port = port_dump(ref_dump, taps=taps, replace={"codec_enc.codes": codes})
    comparison = compare_dumps(ref_dump, port, profile_named("bf16"))
    (divergence,) = comparison.divergences
    assert divergence.key == "codec_enc.codes" and divergence.kind is FlipKind.UNCLASSIFIED


def test_dump_of_another_model_is_refused(ref_dump: StageDump) -> None:
    other = port_dump(ref_dump, model_ref="0.6b-base", weights_hash="f" * 64)
    with pytest.raises(ParityError, match=r"0\.6b-base.*'tiny'"):
        compare_dumps(ref_dump, other, profile_named("fp32"))
    unhashed = port_dump(ref_dump, model_ref="0.6b-base", weights_hash="")
    with pytest.raises(ParityError, match=r"0\.6b-base"):
        compare_dumps(ref_dump, unhashed, profile_named("fp32"))


def test_port_returning_the_whole_budget_passes_on_the_common_prefix(
    reference: HookedReference, ref_dump: StageDump, request_: Request
) -> None:
    # A port that honours max_frames literally: FRAMES frames where the reference returns FRAMES - 1.
    longer = reference.capture(dataclasses.replace(request_, max_frames=FRAMES + 1))
    port = port_dump(longer, max_frames=FRAMES)
    assert len(port.tensors["codes"]) == FRAMES
    result = compare("port", profile_named("fp32"), ref_dump, port, None)
    assert result.verdict is Verdict.PASS, result.verdict_line()
    codes, audio = result.free.stage("codes"), result.free.stage("output.wav")
    assert codes is not None and "frame budget" in codes.note and codes.metrics["frames"] == FRAMES
    assert audio is not None and audio.status is Status.PASS and "frame budget" in audio.note
    snr_rule = profile_named("fp32").rule("output.wav", "snr_db")
    assert snr_rule is not None and audio.metrics["snr_db"] >= snr_rule.limit
    short = port_dump(ref_dump, replace={"codes": ref_dump.tensors["codes"][:-1]})
    assert compare("port", profile_named("fp32"), ref_dump, short, None).verdict is Verdict.FAIL


def test_clip_rounding_compares_the_overlap(
    reference: HookedReference, ref_dump: StageDump, request_: Request
) -> None:
    clip = request_.ref_audio
    rounded = reference.capture(
        dataclasses.replace(request_, ref_audio=clip[: len(clip) // SAMPLES_PER_FRAME * SAMPLES_PER_FRAME])
    )
    # The port drops the clip's last partial frame before its codec encoder only.
    codec = {k: v for k, v in rounded.tensors.items() if k.startswith("codec_enc.") or k == "codes"}
    port = port_dump(ref_dump, replace=codec)
    comparison = compare_dumps(ref_dump, port, profile_named("fp32"))
    stage = comparison.stage("codec_enc.input")
    assert stage is not None and "partial frame" in stage.note
    assert stage.status is Status.PASS and stage.metrics["rel_l2"] == 0.0  # the overlap's numbers
    latent = comparison.stage("codec_enc.latent")
    assert latent is not None and "rel_l2" in latent.metrics
    talker = comparison.stage("talker.prefill.embeds")
    assert talker is not None and talker.status is Status.SKIP and "clip rounding" in talker.note
    # Codes that also differ inside the overlap (frame 0) are not the rounding's doing.
    wrong = rounded.tensors["codec_enc.codes"].copy()
    wrong[0, 0] = (wrong[0, 0] + 1) % 2048
    worse = compare_dumps(
        ref_dump, port_dump(ref_dump, replace={**codec, "codec_enc.codes": wrong}), profile_named("fp32")
    )
    talker = worse.stage("talker.prefill.embeds")
    assert talker is not None and "upstream codec_enc.codes differs" in talker.note
    assert "clip rounding" not in talker.note
    other = port_dump(ref_dump, replace={"codec_enc.input": clip[:1000]})
    shape = compare_dumps(ref_dump, other, profile_named("fp32")).stage("codec_enc.input")
    assert shape is not None and shape.status is Status.FAIL and "rel_l2" in shape.metrics


def test_missing_required_stage_fails_and_coverage_is_stated(ref_dump: StageDump) -> None:
    complete = compare("port", profile_named("fp32"), ref_dump, port_dump(ref_dump), None)
    assert complete.verdict is Verdict.PASS
    coverage = complete.coverage
    assert 0 < len(coverage.compared) < coverage.total
    assert complete.verdict_line().startswith(f"PASS on {len(coverage.compared)} of {coverage.total} stages")
    assert "not covered: " in complete.verdict_line() and "code_predictor.logits" in complete.verdict_line()
    for required in ("output.wav", "codes", "spk.embedding", "codec_enc.codes"):
        result = compare("port", profile_named("fp32"), ref_dump, port_dump(ref_dump, drop=[required]), None)
        assert result.verdict is Verdict.FAIL, required
        assert result.first_failure is not None and result.first_failure.key == required


def test_nan_candidate_fails_the_stage(ref_dump: StageDump) -> None:
    wav = ref_dump.tensors["output.wav"].copy()
    wav[10] = np.nan
    comparison = compare_dumps(
        ref_dump, port_dump(ref_dump, replace={"output.wav": wav}), profile_named("bf16")
    )
    stage = comparison.stage("output.wav")
    assert stage is not None and stage.status is Status.FAIL and "NaN" in stage.note


def test_quantised_header_cannot_make_itself_pass(ref_dump: StageDump, tmp_path: Path) -> None:
    port = port_dump(ref_dump, dtype="int8")
    with pytest.raises(ParityError, match="--profile"):
        profile_for_precision(port.meta.dtype, port.meta.codec_dtype)
    result = compare("port", profile_named("quantised"), ref_dump, port, None)
    assert result.verdict is Verdict.REPORT_ONLY
    paths = write_reports(result, tmp_path)
    assert json.loads(paths["json"].read_text())["verdict"] == "report-only"
    gate = ParityGate()  # expects "pass"
    outcome = evaluate_gate(gate, GateSpec((gate,)), GateInputs(pd.DataFrame(), parity_report=paths["json"]))
    assert outcome.outcome is not Outcome.PASS


def test_precision_vocabulary_and_default_profiles() -> None:
    assert precision_of("F32") is Precision.FP32 and precision_of("float32") is Precision.FP32
    assert precision_of("BF16") is Precision.BF16 and precision_of("f16") is Precision.FP16
    for name in ("Q8_0", "Q4_K", "Q5_K_M", "IQ4_XS", "int8", "fp8"):
        assert precision_of(name) is Precision.QUANTISED, name
    with pytest.raises(ParityError, match="unknown precision"):
        precision_of("double")
    assert profile_for_precision("F32", "F32").name == "fp32"
    assert profile_for_precision("F32", "F16").name == "fp32-codec-f16"
    assert profile_for_precision("BF16", "F32").name == "bf16"
    with pytest.raises(ParityError, match="--profile"):
        profile_for_precision("Q8_0", "F16")
    with pytest.raises(ParityError, match="known: "):
        profile_named("float8_e9")


def test_bare_dump_command_reproduces_the_flagged_verdict(ref_dump: StageDump, tmp_path: Path) -> None:
    layer = ref_dump.tensors["talker.prefill.layer.01"] * 1.01  # a talker fault, as a port dump
    path = write_dump(
        port_dump(ref_dump, replace={"talker.prefill.layer.01": layer}, dtype="bfloat16"),
        tmp_path / "p.safetensors",
    )  # declares bf16 for the fp32 work the suite exported
    assert main(["parity", str(path), "--out", str(tmp_path / "bare")]) == 1
    flags = ["--model", "tiny", "--voice", "slt", "--text", SETTINGS.text, "--language", SETTINGS.language]
    flags += ["--mode", "icl", "--frames", str(FRAMES), "--seed", "0", "--no-non-streaming-mode"]
    assert main(["parity", str(path), *flags, "--out", str(tmp_path / "flagged")]) == 1
    verdicts = [json.loads((tmp_path / d / "report.json").read_text()) for d in ("bare", "flagged")]
    assert verdicts[0]["verdict_line"] == verdicts[1]["verdict_line"]
    assert verdicts[0]["first_failing_stage"]["key"] == "talker.prefill.layer.01"
    assert verdicts[0]["profile"]["name"] == "fp32"  # a declared lower precision does not loosen limits


def test_mismatched_prompt_layout_is_refused(ref_dump: StageDump) -> None:
    other = StageDump(
        meta=dataclasses.replace(ref_dump.meta, non_streaming_mode=True), tensors=ref_dump.tensors
    )
    with pytest.raises(ParityError, match="non_streaming_mode"):
        compare_dumps(ref_dump, other, profile_named("fp32"))


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
    header = {**dataclasses.asdict(ref_dump.meta), "schema_version": 1, "forced": True}
    for name in ("weights_hash", "voice"):
        header.pop(name)
    save_file({"codes": np.zeros((2, 16), np.int64)}, str(tmp_path / "v1.safetensors"),
              metadata={METADATA_KEY: json.dumps(header)})  # fmt: skip
    assert read_dump(tmp_path / "v1.safetensors").meta.forced == tuple(ForcedInput)  # migrated


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
    data: dict[str, Any] = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert data["verdict"] == "pass" and data["comparisons"][0]["mode"] == "free"


def test_settings_come_from_the_header(ref_dump: StageDump) -> None:
    assert resolve_settings(ref_dump.meta, {}) == SETTINGS
    assert resolve_settings(ref_dump.meta, {"max_frames": 3, "model": None}).max_frames == 3
    with pytest.raises(ParityError, match="--voice"):
        resolve_settings(dataclasses.replace(ref_dump.meta, voice=""), {})


# --- sweeps ------------------------------------------------------------------------------------------------

SWEEP_FIXTURES = ("en_short", "en_numbers", "ja_short", "zh_short", "en_question")


@pytest.mark.slow
def test_parity_sweep_over_fixtures_and_modes_writes_one_report(tmp_path: Path) -> None:
    from qtts_eval import report

    selection = [arg for text_id in SWEEP_FIXTURES for arg in ("--fixture", text_id)]
    out = tmp_path / "sweep"
    modes = ["--mode", "icl", "--mode", "xvector"]
    code = main(["parity", "reference", *selection, *modes, "--frames", "3", "--out", str(out)])
    assert code == 0
    data = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
    assert data["passed"] and data["aggregate"]["requests"] == 10
    assert data["aggregate"]["same_codes"] == 10 and data["aggregate"]["verdicts"] == {"pass": 10}
    assert data["aggregate"]["frames_differ"] == 0
    assert data["aggregate"]["passed_by_mode"] == {"icl": "5/5", "xvector": "5/5"}
    slugs = [row["request"] for row in data["rows"]]
    assert slugs[:2] == ["en_short-icl-slt", "en_short-xvector-slt"] and len(set(slugs)) == 10
    for row in data["rows"]:  # each request has its own full report, linked from the sweep's page
        report_data = json.loads((out / row["request"] / "report.json").read_text(encoding="utf-8"))
        assert report_data["reference_meta"]["clone_mode"] == row["mode"]
        assert report_data["reference_meta"]["text"] == _fixture_text(row["text_id"])
    assert all(f"href='{slug}/report.html'" in (out / "sweep.html").read_text() for slug in slugs)
    table = report.parity_sweep_table(out)  # the notebook's view of the same folder
    assert len(table) == 10 and set(table["verdict"]) == {"pass"} and set(table["mode"]) == {"icl", "xvector"}


def _fixture_text(text_id: str) -> str:
    from qtts_eval import fixtures

    return fixtures.load_fixtures().text(text_id).text


class _FaultyAndCrashing(HookedReference):
    """A candidate with a planted talker fault that also fails outright on one text, as a crashing port
    would: the sweep must report the crash as that request's error and still judge the others."""

    crash_on = "en_numbers"

    def __init__(self, config: PipelineConfig) -> None:
        super().__init__(config, fault=FAULTS["talker-weight"]())

    def write_stage_dump(
        self, request: Request, path: Path, *, forced: ForcedInputs | None = None
    ) -> StageDump:
        from qtts_eval.errors import PipelineError

        if request.text == _fixture_text(self.crash_on):
            raise PipelineError("planted crash: the candidate died on this request")
        return super().write_stage_dump(request, path, forced=forced)


@pytest.mark.slow
def test_parity_sweep_catches_a_planted_fault_and_survives_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qtts_eval import pipelines

    monkeypatch.setattr(pipelines, "_runtime", {"faulty-port": _FaultyAndCrashing})
    out = tmp_path / "sweep"
    selection = ["--fixture", "en_short", "--fixture", "en_numbers", "--mode", "icl", "--mode", "xvector"]
    code = main(["parity", "faulty-port", *selection, "--frames", "3", "--out", str(out)])
    assert code == 1
    data = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
    rows = {row["request"]: row for row in data["rows"]}
    assert [rows[f"en_numbers-{mode}-slt"]["verdict"] for mode in ("icl", "xvector")] == ["error", "error"]
    assert "planted crash" in rows["en_numbers-icl-slt"]["note"]
    for mode in ("icl", "xvector"):  # the fault is caught at its stage in every request that ran
        row = rows[f"en_short-{mode}-slt"]
        assert row["verdict"] == "fail" and row["first_failing_group"] == FAULTS["talker-weight"].group
        assert (out / row["request"] / "report.html").is_file()
    aggregate = data["aggregate"]
    assert aggregate["verdicts"] == {"fail": 2, "error": 2}
    assert "planted crash" in (out / "sweep.md").read_text(encoding="utf-8")


def test_sweep_selection_is_checked_before_anything_loads() -> None:
    from qtts_eval.errors import FixtureError
    from qtts_eval.parity.session import sweep_requests

    requests = sweep_requests(
        ["en_short", "en_short", "ja_short"], ["icl", "xvector"], ["slt", "rms"], None, None
    )
    assert len(requests) == 8  # duplicates dropped: 2 texts x 2 modes x 2 voices
    assert requests[0].slug == "en_short-icl-slt" and {r.language for r in requests} == {
        "english",
        "japanese",
    }
    with pytest.raises(FixtureError, match="en_shrot"):
        sweep_requests(["en_shrot"], [], [], None, None)
    with pytest.raises(ParityError, match="either --text or --fixture"):
        sweep_requests(["en_short"], [], [], "Hello.", None)
    assert main(["parity", "reference", "--fixture", "en_short", "--fixture", "nope"]) == 2


def test_hints_name_a_one_frame_difference_and_a_length_off_by_one_stride(ref_dump: StageDump) -> None:
    from qtts_eval.parity.report import check_next

    wav = ref_dump.tensors["codec_dec.wav"]
    stride = wav.shape[-1] // ref_dump.tensors["codec_dec.codes"].shape[-1]
    one_frame = wav.copy()
    one_frame[..., stride : 2 * stride] += 0.5 * float(np.abs(wav).max())
    result = compare(
        "port",
        profile_named("fp32"),
        ref_dump,
        port_dump(ref_dump, replace={"codec_dec.wav": one_frame}),
        None,
    )
    stage = result.free.stage("codec_dec.wav")
    assert stage is not None and stage.onset == "decoder frame 1 only", stage
    assert "decoder frame 1 alone" in check_next(result)["codec_decoder"]
    everywhere = wav + 0.5 * float(np.abs(wav).max())
    result = compare(
        "port",
        profile_named("fp32"),
        ref_dump,
        port_dump(ref_dump, replace={"codec_dec.wav": everywhere}),
        None,
    )
    assert "alone" not in check_next(result)["codec_decoder"]  # every frame differs: not an edge
    short = wav[..., :-stride].copy()
    result = compare(
        "port", profile_named("fp32"), ref_dump, port_dump(ref_dump, replace={"codec_dec.wav": short}), None
    )
    assert "one upsampling stride" in check_next(result)["codec_decoder"]
    shorter = wav[..., : -stride - 7].copy()
    result = compare(
        "port", profile_named("fp32"), ref_dump, port_dump(ref_dump, replace={"codec_dec.wav": shorter}), None
    )
    assert "stride" not in check_next(result).get("codec_decoder", "")


def test_a_decoder_difference_past_frame_300_names_the_references_chunked_decode(ref_dump: StageDump) -> None:
    # A long request's audio (310 frames): the reference decodes offline in 300-frame chunks, which a correct
    # streaming port does not, so a difference starting past frame 300 is labelled as that convention.
    long = np.random.default_rng(0).normal(0.0, 0.1, 310 * SAMPLES_PER_FRAME).astype(np.float32)
    reference = StageDump(ref_dump.meta, {**ref_dump.tensors, "codec_dec.wav": long})
    edge = long.copy()
    edge[305 * SAMPLES_PER_FRAME :] *= 1.5
    stage = compare_dumps(
        reference, port_dump(reference, replace={"codec_dec.wav": edge}), profile_named("fp32")
    ).stage("codec_dec.wav")
    assert stage is not None and stage.status is Status.FAIL
    assert stage.onset.startswith("decoder frame 305 (past 300: the reference's chunked decode convention")
    early = long.copy()
    early[5 * SAMPLES_PER_FRAME :] *= 1.5
    stage = compare_dumps(
        reference, port_dump(reference, replace={"codec_dec.wav": early}), profile_named("fp32")
    ).stage("codec_dec.wav")
    assert stage is not None and stage.onset == "decoder frame 5" and "chunked" not in stage.note
