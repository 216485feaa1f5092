"""Compare two stage dumps under a tolerance profile: per-stage metrics, code divergences and their evidence.

Free-running dumps are compared only where both sides saw the same discrete inputs: per-step logits up to the
first divergent code, the codec decoder and audio over the frames whose codes agree (the decoder is causal).
Inputs a candidate took from the reference (teacher forcing, per input) stop gating what follows them.

Never blame wrongly: a stage the candidate did not dump is counted, not failed, unless it is required
(dumps.required_keys); a code divergence is `real` only on positive evidence; the frame-budget and
clip-rounding conventions (docs/parity.md) are reported as such, and their overlaps compared.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from qtts_eval.errors import ParityError
from qtts_eval.metrics.audio import log_mel_l1, snr_db
from qtts_eval.parity.dumps import DumpMeta, StageDump, required_keys, stage_of, stage_sort_key, time_axis
from qtts_eval.parity.profiles import Profile, Rule
from qtts_eval.pipelines.base import ForcedInput
from qtts_eval.units import SAMPLES_PER_FRAME

DISCRETE_INPUTS = ("inputs.text_ids", "inputs.ref_text_ids", "codec_enc.codes")  # gate everything downstream
DOWNSTREAM_GROUPS = ("talker", "code_predictor", "codec_decoder", "output")  # what a discrete input feeds
CLIP_GROUPS = ("inputs", "codec_encoder")  # stages that see the reference clip frame by frame
# The reference's offline decode (chunked_decode) works in chunks of this many frames with 25 frames of left
# context: a convention a port decoding in one piece differs from on long requests.
REFERENCE_CHUNK_FRAMES = 300
ONE_FRAME_ONLY = " only"  # ends an onset when no other frame passes the tolerance ("decoder frame 0 only")
# Groups whose numbers shape a generated code: a teacher-forced failure there is evidence about a flip.
DECISION_UPSTREAM = ("inputs", "speaker_encoder", "codec_encoder", "talker", "code_predictor")


class Status(str, enum.Enum):
    """Outcome of one stage."""

    PASS = "pass"  # within every threshold of the profile
    FAIL = "fail"  # a threshold, shape or exactness requirement broken, or a required stage missing
    UNCLASSIFIED = "unclassified"  # codes diverge and no evidence says whether it is a near tie or real
    INHERITED = "inherited"  # codes differ after an upstream stage failed: that failure is the cause
    SKIP = "skip"  # not comparable here: an upstream discrete input differs, or no common frames
    MISSING = "missing"  # optional stage the candidate did not dump: counted as not covered
    INFO = "info"  # computed and shown, never gated (report-only profile, reference-only tensors)


COMPARED = (
    Status.PASS,
    Status.FAIL,
    Status.UNCLASSIFIED,
    Status.INHERITED,
)  # statuses of stages whose numbers were compared


class FlipKind(str, enum.Enum):
    """What a code divergence is."""

    NEAR_TIE = "near_tie"  # the reference's margin is within what the candidate's error explains
    REAL = "real"  # the candidate's logits reproduce its code and the margin exceeds its error elsewhere
    DECISION_RULE = "decision_rule"  # its logits pick the reference's code, it emitted another (penalty, ...)
    INHERITED = "inherited"  # follows an upstream stage's failure (Divergence.inherited_from)
    UNCLASSIFIED = "unclassified"  # no evidence either way (the candidate did not dump what would decide)


class Evidence(str, enum.Enum):
    """What a divergence's classification rests on."""

    CANDIDATE_LOGITS = "candidate_logits"  # the candidate's own numbers for this decision (logits, RVQ input)
    FORCED_RUN = "forced_run"  # the teacher-forced run's logits of the same network at this decision
    UPSTREAM_FAILURE = "upstream_failure"  # a stage upstream of the decision failed (free or forced run)
    MEASURED_ERROR = "measured_error"  # a bound from the candidate's error in another stage it dumped
    NONE = "none"  # nothing decides it


@dataclass(frozen=True)
class Check:
    """One threshold applied to one metric."""

    metric: str  # metric name
    value: float  # measured value
    rule: Rule  # the threshold and its source
    ok: bool  # value within the rule


@dataclass(frozen=True)
class StageResult:
    """Comparison of one dump key."""

    key: str  # dump key
    group: str  # pipeline stage group (dumps.Stage.group)
    kind: str  # dumps.Stage.kind
    status: Status  # outcome
    metrics: Mapping[str, float] = field(default_factory=dict)  # name -> value
    checks: tuple[Check, ...] = ()  # thresholds applied
    note: str = ""  # why it failed, was skipped or what convention applied, in words
    per_codebook: tuple[float, ...] = ()  # codes stages: exact-match fraction per codebook
    required: bool = False  # in dumps.required_keys: missing fails
    onset: str = ""  # time-series stages that fail: the first frame or row past the tolerance, in words


@dataclass(frozen=True)
class Divergence:
    """The first place where two code sequences differ, and what it is."""

    key: str  # "codes" or "codec_enc.codes"
    frame: int  # frame index of the first difference
    codebook: int  # codebook index (0-15) within that frame
    reference_code: int  # what the reference chose
    candidate_code: int  # what the candidate chose
    reference_margin: float  # reference's best minus second-best logit, or 2nd-best minus best distance
    candidate_error: float | None  # bound on how far the candidate's numbers move that margin; None: unknown
    kind: FlipKind  # near tie, real, or unclassified
    evidence: Evidence  # what the classification rests on
    evidence_note: str  # the evidence in words, e.g. "2 x max logit error of talker.logits rows 0-2"
    inherited_from: str = (
        ""  # the failing upstream stage of an inherited flip, e.g. "talker.prefill.layer.01"
    )
    replayed_code: int | None = None  # the code the candidate's logits pick under the requested decision rule


@dataclass(frozen=True)
class Comparison:
    """All stage results of one reference/candidate pair."""

    mode: str  # "free" (nothing forced) or "forced" (some inputs teacher-forced; see `forced`)
    forced: tuple[ForcedInput, ...]  # inputs the candidate took from the reference dump
    profile: str  # profile name
    stages: tuple[StageResult, ...]  # in pipeline order
    divergences: tuple[Divergence, ...]  # code divergences found

    @property
    def passed(self) -> bool:
        return all(stage.status is not Status.FAIL for stage in self.stages)

    @property
    def first_failure(self) -> StageResult | None:
        return next((stage for stage in self.stages if stage.status is Status.FAIL), None)

    @property
    def group_failures(self) -> tuple[StageResult, ...]:
        """The first failing stage of each failing group, in pipeline order."""
        found: dict[str, StageResult] = {}
        for stage in self.stages:
            if stage.status is Status.FAIL:
                found.setdefault(stage.group, stage)
        return tuple(found.values())

    def stage(self, key: str) -> StageResult | None:
        return next((stage for stage in self.stages if stage.key == key), None)


@dataclass(frozen=True)
class ForcedRun:
    """A teacher-forced run of the same candidate, used as evidence for the free run's code divergences."""

    dump: StageDump  # the candidate's teacher-forced dump
    comparison: Comparison  # its comparison with the reference


def check_same_request(reference: DumpMeta, candidate: DumpMeta) -> None:
    """Refuse to compare dumps of different requests, prompt layouts, clone modes or models."""
    check_same_model(reference, candidate)
    if reference.voice and candidate.voice and reference.voice != candidate.voice:
        raise ParityError(
            f"the dumps are of different voices: {candidate.voice!r} in the candidate, {reference.voice!r} "
            "in the reference; drop --voice to use the dump's"
        )
    for name in DumpMeta.MUST_MATCH:
        ref_value, cand_value = getattr(reference, name), getattr(candidate, name)
        if ref_value != cand_value:
            raise ParityError(
                f"the dumps are of different requests: {name} is {ref_value!r} in the reference and "
                f"{cand_value!r} in the candidate; rerun the candidate with the reference's settings"
            )


def check_same_model(reference: DumpMeta, candidate: DumpMeta) -> None:
    """Refuse a candidate dump of another checkpoint: by weights hash when both know it, else by model ref."""
    if reference.weights_hash and candidate.weights_hash:
        if reference.weights_hash != candidate.weights_hash:
            raise ParityError(
                f"the candidate dump is of other weights: weights hash {candidate.weights_hash[:16]} "
                f"(model {candidate.model_ref!r}) vs the reference's {reference.weights_hash[:16]} "
                f"(model {reference.model_ref!r}); compare against the checkpoint the port was run on"
            )
        return
    if candidate.model_ref and candidate.model_ref != reference.model_ref:
        raise ParityError(
            f"the candidate dump is of model {candidate.model_ref!r} but the reference ran "
            f"{reference.model_ref!r}, and the candidate's header has no weights_hash to show they are the "
            "same weights; run the reference on the dump's model (drop --model) or write weights_hash"
        )


def tensor_metrics(ref: npt.NDArray[Any], cand: npt.NDArray[Any]) -> dict[str, float]:
    """max/mean absolute difference, relative L2 (to the reference) and cosine similarity."""
    a = ref.astype(np.float64).ravel()
    b = cand.astype(np.float64).ravel()
    diff = np.abs(a - b)
    norm_a, norm_b = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    err = float(np.linalg.norm(a - b))
    rel = 0.0 if err == 0.0 else (err / norm_a if norm_a > 0 else math.inf)
    if norm_a == 0.0 or norm_b == 0.0:
        cosine = 1.0 if err == 0.0 else 0.0
    else:
        cosine = float(np.dot(a, b) / (norm_a * norm_b))
    return {
        "max_abs": float(diff.max(initial=0.0)),
        "mean_abs": float(diff.mean()) if diff.size else 0.0,
        "rel_l2": rel,
        "cosine": cosine,
    }


def logits_metrics(ref: npt.NDArray[Any], cand: npt.NDArray[Any]) -> dict[str, float]:
    """Tensor metrics plus mean KL(ref || cand) of the softmaxes (nats) and top-1 agreement, over rows."""
    found = tensor_metrics(ref, cand)
    a = ref.astype(np.float64)
    b = cand.astype(np.float64)
    log_p = a - a.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    log_q = b - b.max(-1, keepdims=True)
    log_q -= np.log(np.exp(log_q).sum(-1, keepdims=True))
    found["kl"] = float((np.exp(log_p) * (log_p - log_q)).sum(-1).mean())
    found["top1"] = float((a.argmax(-1) == b.argmax(-1)).mean())
    return found


def audio_metrics(ref: npt.NDArray[Any], cand: npt.NDArray[Any]) -> dict[str, float]:
    """SNR and log-mel L1 (qtts_eval.metrics.audio, docs/metrics.md) plus tensor metrics, equal lengths."""
    a, b = ref.astype(np.float64), cand.astype(np.float64)
    return {"snr_db": snr_db(a, b), "log_mel_l1": log_mel_l1(a, b), **tensor_metrics(a, b)}


def _first_divergence(ref: npt.NDArray[Any], cand: npt.NDArray[Any]) -> tuple[int, int] | None:
    """(frame, codebook) of the first differing code within the common frames, or None."""
    n = min(len(ref), len(cand))
    where = np.argwhere(ref[:n] != cand[:n])
    return (int(where[0][0]), int(where[0][1])) if len(where) else None


def _cut(array: npt.NDArray[Any], axis: int, length: int) -> npt.NDArray[Any]:
    index: list[slice] = [slice(None)] * array.ndim
    index[axis] = slice(0, length)
    return array[tuple(index)]


def _overlap(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """The common leading block of two arrays of the same rank."""
    index = tuple(slice(0, min(x, y)) for x, y in zip(a.shape, b.shape, strict=True))
    return a[index], b[index]


def _nonfinite_note(side: str, array: npt.NDArray[Any]) -> str | None:
    bad = np.flatnonzero(~np.isfinite(array.ravel()))
    if not bad.size:
        return None
    return (
        f"the {side} holds {bad.size} NaN or infinite values of {array.size} (first at flat index {bad[0]})"
    )


# kind, candidate error bound, evidence, evidence note, inherited_from, replayed code (Divergence fields)
_Found = tuple[FlipKind, float | None, Evidence, str, str, int | None]


class _Comparer:
    def __init__(
        self, reference: StageDump, candidate: StageDump, profile: Profile, forced_run: ForcedRun | None
    ) -> None:
        self.ref = reference.tensors
        self.cand = candidate.tensors
        self.meta = candidate.meta
        self.profile = profile
        self.forced_run = forced_run
        self.required = set(required_keys(reference.meta.clone_mode))
        self.results: dict[str, StageResult] = {}
        self.divergences: list[Divergence] = []
        self.agree_frames, self.frame_note = self._frames()
        self.clip_note = self._clip_rounding()

    # -- conventions ------------------------------------------------------------------------------------

    def _frames(self) -> tuple[int | None, str]:
        """Leading generated frames whose codes agree (None: unknown), and the frame-budget note if any."""
        if "codes" not in self.ref or "codes" not in self.cand:
            return None, ""
        ref, cand = self.ref["codes"], self.cand["codes"]
        if ref.ndim != 2 or cand.ndim != 2 or ref.shape[1:] != cand.shape[1:]:
            return 0, ""
        found = _first_divergence(ref, cand)
        agree = min(len(ref), len(cand)) if found is None else found[0]
        budget = self.meta.max_frames
        note = ""
        if len(ref) == budget - 1 and len(cand) == budget:
            note = (
                f"frame budget: the candidate returns all {budget} frames, the reference budget - 1 = "
                f"{len(ref)} when capped (docs/parity.md); the common {len(ref)} frames are compared"
            )
        return agree, note

    def _clip_rounding(self) -> str:
        """The clip-rounding note when the candidate encoded the clip without its last partial frame."""
        clip = self.ref.get("inputs.ref_audio")
        partial = 0 if clip is None else len(clip) % SAMPLES_PER_FRAME
        if not partial or "codec_enc.codes" not in self.ref or "codec_enc.codes" not in self.cand:
            return ""
        if len(self.cand["codec_enc.codes"]) != len(self.ref["codec_enc.codes"]) - 1:
            return ""
        return (
            f"clip rounding: the candidate drops the reference clip's last partial frame ({partial} of "
            f"{SAMPLES_PER_FRAME} samples) before encoding; the overlap is compared (docs/parity.md)"
        )

    def _clip_rounded_shape(self, key: str) -> bool:
        """True when `key`'s shapes differ exactly as dropping the clip's last partial frame makes them."""
        axis = time_axis(key)
        a, b = self.ref[key], self.cand[key]
        if not self.clip_note or axis is None or stage_of(key).group not in CLIP_GROUPS or a.ndim != b.ndim:
            return False
        others_equal = all(x == y for i, (x, y) in enumerate(zip(a.shape, b.shape, strict=True))
                           if i != axis % a.ndim)  # fmt: skip
        samples = stage_of(key).pattern in ("inputs.ref_audio", "codec_enc.input")
        dropped = len(self.ref["inputs.ref_audio"]) % SAMPLES_PER_FRAME if samples else 1
        return others_equal and a.shape[axis] - b.shape[axis] == dropped

    # -- results ------------------------------------------------------------------------------------------

    def result(self, key: str, status: Status, **extra: Any) -> StageResult:
        stage = stage_of(key)
        if self.profile.report_only and status in (Status.FAIL, Status.UNCLASSIFIED):
            status = Status.INFO
        found = StageResult(
            key=key, group=stage.group, kind=stage.kind, status=status, required=key in self.required, **extra
        )
        self.results[key] = found
        return found

    def gated(
        self, key: str, metrics: dict[str, float], note: str = "", failed_already: str = ""
    ) -> StageResult:
        """Apply the profile's rules to `metrics`; `failed_already` fails the stage whatever the numbers."""
        checks = []
        for metric, value in metrics.items():
            rule = self.profile.rule(key, metric)
            if rule is not None:
                checks.append(Check(metric=metric, value=value, rule=rule, ok=rule.ok(value)))
        failed = [c for c in checks if not c.ok]
        reasons = [failed_already] if failed_already else []
        reasons += [f"{c.metric} {c.value:.3g} breaks {c.rule.bound} {c.rule.limit:g}" for c in failed]
        status = Status.FAIL if reasons else Status.PASS
        text = "; ".join(part for part in (*reasons, note) if part)
        return self.result(key, status, metrics=metrics, checks=tuple(checks), note=text)

    def compare_numbers(
        self, key: str, a: npt.NDArray[Any], b: npt.NDArray[Any], note: str = "", failed_already: str = ""
    ) -> None:
        """Tensor or audio metrics of two equal-shape arrays, gated; non-finite values fail the stage."""
        bad = _nonfinite_note("candidate", b) or _nonfinite_note("reference", a)
        if bad:
            fraction = float(np.mean(~np.isfinite(b))) if b.size else 0.0
            self.result(key, Status.FAIL, metrics={"nonfinite": fraction}, note=bad)
            return
        if a.size == 0:
            self.result(key, Status.SKIP, note=note or "no common values to compare")
            return
        metrics = audio_metrics(a, b) if stage_of(key).kind == "audio" else tensor_metrics(a, b)
        found = self.gated(key, metrics, note=note, failed_already=failed_already)
        if found.status is Status.FAIL:
            self.mark_onset(found, self.frame_onset(key, a, b))

    def mark_onset(self, found: StageResult, onset: str) -> None:
        if onset:
            self.results[found.key] = replace(found, onset=onset, note=f"from {onset}; {found.note}")

    def frame_onset(self, key: str, a: npt.NDArray[Any], b: npt.NDArray[Any]) -> str:
        """The first frame whose error passes the profile's tolerance ("decoder frame 72"), or "": each
        frame's error relative to its share of the whole reference's norm, so quiet frames do not dominate."""
        axis = time_axis(key)
        limit = self.relative_limit(key)
        if axis is None or limit is None or a.shape != b.shape or a.ndim == 0:
            return ""
        a64 = np.moveaxis(a.astype(np.float64), axis, 0)
        diff = a64 - np.moveaxis(b.astype(np.float64), axis, 0)
        per_frame = self.samples_per_frame(key, a64.shape[0])
        frames = a64.shape[0] // per_frame
        if frames == 0:
            return ""
        cut = frames * per_frame
        error = np.sqrt((diff[:cut].reshape(frames, -1) ** 2).sum(1))
        share = float(np.linalg.norm(a64)) * math.sqrt(1.0 / frames)
        past = np.flatnonzero(error > limit * share) if share > 0 else np.flatnonzero(error > 0)
        if not past.size:
            return ""
        onset = f"{frame_unit(key)} {int(past[0])}" + (ONE_FRAME_ONLY if past.size == 1 else "")
        if stage_of(key).group == "codec_decoder" and past[0] >= REFERENCE_CHUNK_FRAMES:
            onset += (
                f" (past {REFERENCE_CHUNK_FRAMES}: the reference's chunked decode convention, docs/parity.md)"
            )
        return onset

    def relative_limit(self, key: str) -> float | None:
        """The profile's tolerance as a relative L2 error: rel_l2, for audio the tighter of it and snr_db."""
        limits = [rule.limit] if (rule := self.profile.rule(key, "rel_l2")) is not None else []
        if stage_of(key).kind == "audio" and (snr := self.profile.rule(key, "snr_db")) is not None:
            limits.append(float(10.0 ** (-snr.limit / 20.0)))
        return min(limits) if limits else None

    def samples_per_frame(self, key: str, length: int) -> int:
        """Entries per codec frame along `key`'s time axis (1 for stages indexed by frame)."""
        if key in ("codec_dec.wav", "output.wav", "inputs.ref_audio", "codec_enc.input"):
            return SAMPLES_PER_FRAME
        if stage_of(key).group == "codec_decoder" and "codec_dec.codes" in self.ref:
            return max(length // max(int(self.ref["codec_dec.codes"].shape[-1]), 1), 1)
        return 1

    # -- the walk -----------------------------------------------------------------------------------------

    def run(self) -> list[StageResult]:
        keys = sorted(set(self.ref) | set(self.cand), key=stage_sort_key)
        upstream = ""
        for key in keys:
            stage = stage_of(key)
            if key not in self.cand:
                if key in self.required:
                    self.result(key, Status.FAIL, note="required stage missing in the candidate dump")
                else:
                    self.result(key, Status.MISSING, note="not dumped by the candidate")
                continue
            if key not in self.ref:
                self.result(key, Status.INFO, note="not in the reference dump")
                continue
            if stage.kind == "margin":
                self.result(key, Status.INFO, metrics={"min": float(self.ref[key].min(initial=math.inf))})
            elif upstream and stage.group in DOWNSTREAM_GROUPS:
                self.result(key, Status.SKIP, note=f"not comparable: {upstream}")
            elif stage.kind == "codes":
                self.compare_codes(key)
            elif stage.kind == "logits":
                self.compare_logits(key)
            elif stage.group in ("codec_decoder", "output"):
                self.compare_decoded(key)
            elif stage.kind == "ids":
                self.compare_ids(key)
            else:
                self.compare_tensor(key)
            feeds_on = key in DISCRETE_INPUTS and not upstream and not self.forced_input(key)
            if feeds_on and not _equal(self.ref[key], self.cand[key]):
                # Rounding explains the length only: codes that also differ in the overlap have another cause.
                rounded = (
                    key == "codec_enc.codes"
                    and self.clip_note
                    and _equal(*_overlap(self.ref[key], self.cand[key]))
                )
                cause = " (clip rounding)" if rounded else ""
                upstream = f"upstream {key} differs{cause}"
        return [self.results[key] for key in keys]

    def forced_input(self, key: str) -> bool:
        """True when the candidate took `key` from the reference, so its own value does not feed on."""
        return any(f.value == key and self.meta.forces(f) for f in ForcedInput)

    def compare_tensor(self, key: str) -> None:
        a, b = self.ref[key], self.cand[key]
        if a.shape == b.shape:
            self.compare_numbers(key, a, b)
        elif self._clip_rounded_shape(key):
            self.compare_numbers(key, *_overlap(a, b), note=self.clip_note)
        else:
            self.compare_shape_mismatch(key)

    def compare_shape_mismatch(self, key: str) -> None:
        a, b = self.ref[key], self.cand[key]
        what = f"shape {tuple(b.shape)} differs from the reference's {tuple(a.shape)}"
        axis = time_axis(key)
        if axis is not None and a.ndim == b.ndim and stage_of(key).group in CLIP_GROUPS:
            frames = abs(a.shape[axis] - b.shape[axis])
            unit = (
                SAMPLES_PER_FRAME if stage_of(key).pattern in ("inputs.ref_audio", "codec_enc.input") else 1
            )
            if frames <= unit:
                what += " (likely cause: frame rounding of the reference clip)"
        if a.ndim != b.ndim:
            self.result(key, Status.FAIL, note=what)
            return
        self.compare_numbers(key, *_overlap(a, b), note="metrics over the overlap", failed_already=what)

    def compare_ids(self, key: str) -> None:
        a, b = self.ref[key], self.cand[key]
        if _equal(a, b):
            self.result(key, Status.PASS, metrics={"exact": 1.0})
            return
        if a.shape == b.shape:
            exact = float(np.mean(a == b))
        elif a.ndim == b.ndim:
            overlap_a, overlap_b = _overlap(a, b)
            exact = float(np.mean(overlap_a == overlap_b)) if overlap_a.size else 0.0
        else:
            exact = 0.0
        shapes = "" if a.shape == b.shape else f"; shape {tuple(b.shape)} vs the reference's {tuple(a.shape)}"
        self.result(
            key, Status.FAIL, metrics={"exact": exact}, note=f"ids differ; they must match exactly{shapes}"
        )

    def decoded_prefix(self, key: str) -> tuple[int, str] | None:
        """How much of a decoder/audio stage is comparable: (length along its time axis, note), or None
        when the whole of it is."""
        if self.agree_frames is None:
            return None
        ref_frames = len(self.ref["codes"])
        if self.agree_frames == ref_frames == len(self.cand["codes"]):
            return None
        axis = time_axis(key)
        if axis is None:
            return 0, "not comparable: generated codes differ"
        length = self.ref[key].shape[axis]
        if key == "output.wav":
            per_frame, lead = SAMPLES_PER_FRAME, 0
        else:  # codec decoder stages also hold the reference clip's frames (ICL) ahead of the generated ones
            decoded = self.ref["codec_dec.codes"].shape[-1] if "codec_dec.codes" in self.ref else ref_frames
            per_frame, lead = length // max(decoded, 1), decoded - ref_frames
        keep = (lead + self.agree_frames) * per_frame
        if self.frame_note and self.agree_frames == ref_frames:
            return keep, self.frame_note
        return (
            keep,
            f"first {self.agree_frames} of {ref_frames} frames: codes agree there and the decoder is causal",
        )

    def compare_decoded(self, key: str) -> None:
        a, b = self.ref[key], self.cand[key]
        prefix = self.decoded_prefix(key)
        note = ""
        if prefix is not None:
            keep, note = prefix
            if keep == 0:
                self.result(key, Status.SKIP, note="not comparable: generated codes differ from frame 0")
                return
            axis = time_axis(key)
            assert axis is not None  # decoded_prefix returns keep > 0 only for stages with a time axis
            if b.shape[axis] < keep:
                self.compare_shape_mismatch(key)
                return
            a, b = _cut(a, axis, keep), _cut(b, axis, keep)
        if stage_of(key).kind == "ids":
            if _equal(a, b):
                self.result(key, Status.PASS, metrics={"exact": 1.0}, note=note)
            else:
                self.result(key, Status.FAIL, note="; ".join(x for x in ("ids differ", note) if x))
        elif a.shape == b.shape:
            self.compare_numbers(key, a, b, note=note)
        else:
            self.compare_shape_mismatch(key)

    # -- codes ----------------------------------------------------------------------------------------------

    def compare_codes(self, key: str) -> None:
        ref, cand = self.ref[key], self.cand[key]
        if ref.ndim != 2 or cand.ndim != 2 or ref.shape[1] != cand.shape[1]:
            self.result(key, Status.FAIL, note=f"codes shape {cand.shape} vs reference {ref.shape}")
            return
        n = min(len(ref), len(cand))
        per_codebook = tuple(float(x) for x in (ref[:n] == cand[:n]).mean(0)) if n else ()
        metrics = {
            "exact": float((ref[:n] == cand[:n]).mean()) if n else 0.0,
            "frames": float(len(cand)),
            "reference_frames": float(len(ref)),
        }
        length_ok, length_note = self.length_check(key, len(ref), len(cand))
        found = _first_divergence(ref, cand)
        status, notes = Status.PASS, []
        if found is not None:
            frame, codebook = found
            metrics["first_divergent_frame"] = float(frame)
            divergence = self.classify(key, frame, codebook)
            self.divergences.append(divergence)
            status, note = self.codes_status(key, divergence)
            notes.append(note)
        if not length_ok:
            status = Status.FAIL
        notes.append(length_note)
        note = "; ".join(n for n in notes if n)
        self.result(key, status, metrics=metrics, per_codebook=per_codebook, note=note)

    def length_check(self, key: str, ref_frames: int, cand_frames: int) -> tuple[bool, str]:
        """Whether the frame counts are acceptable, and the note: a convention's, or why they are not."""
        if ref_frames == cand_frames:
            return True, ""
        if key == "codes" and self.frame_note:
            return True, self.frame_note
        if key == "codec_enc.codes" and self.clip_note:
            return True, self.clip_note
        return False, f"{cand_frames} frames, reference has {ref_frames}"

    def codes_status(self, key: str, divergence: Divergence) -> tuple[Status, str]:
        where = describe_divergence(divergence)
        if key == "codes" and self.meta.forces(ForcedInput.CODES):
            return Status.FAIL, f"teacher-forced codes were not followed at {where}"
        if divergence.kind is FlipKind.INHERITED:  # the upstream stage fails the run and names the cause
            return Status.INHERITED, f"inherited from {divergence.inherited_from} at {where}"
        if self.profile.codes_exact(key):
            return Status.FAIL, f"first divergence at {where} ({self.profile.exact_codes_source})"
        if divergence.kind is FlipKind.REAL:
            return Status.FAIL, f"real disagreement at {where}"
        if divergence.kind is FlipKind.DECISION_RULE:
            return Status.FAIL, f"decision-rule difference at {where}"
        if divergence.kind is FlipKind.UNCLASSIFIED:
            return Status.UNCLASSIFIED, f"unclassified divergence at {where}"
        return Status.PASS, f"near-tie flip at {where}"

    def classify(self, key: str, frame: int, codebook: int) -> Divergence:
        ref_code, cand_code = int(self.ref[key][frame, codebook]), int(self.cand[key][frame, codebook])
        if key == "codec_enc.codes":
            margins = self.ref.get("codec_enc.margin")
            margin = 0.0 if margins is None else float(margins[frame, codebook])
            found = self.classify_encoder(frame, codebook, margin)
        else:
            ref_row = self.ref_decision_logits(frame, codebook)
            top = np.sort(ref_row)[-2:]
            margin = float(top[1] - top[0])
            found = self.classify_generated(frame, codebook, ref_row, margin, cand_code)
        kind, error, evidence, note, inherited_from, replayed = found
        return Divergence(
            key, frame, codebook, ref_code, cand_code, margin, error, kind, evidence, note, inherited_from,
            replayed,
        )  # fmt: skip

    def classify_encoder(self, frame: int, codebook: int, margin: float) -> _Found:
        name = "codec_enc.rvq_in." + ("semantic" if codebook == 0 else "acoustic")
        if (
            name not in self.ref
            or name not in self.cand
            or self.ref[name].shape[1:] != self.cand[name].shape[1:]
        ):
            return FlipKind.UNCLASSIFIED, None, Evidence.NONE, f"the candidate did not dump {name}", "", None
        # Earlier codebooks of this frame agree, so the residuals differ exactly by the input difference;
        # a distance moves by at most that much, a gap by at most twice.
        error = 2.0 * float(np.linalg.norm(self.ref[name][frame] - self.cand[name][frame]))
        note = f"2 x the {name} difference at frame {frame}"
        upstream = self.upstream_failure()
        if upstream:
            return (
                FlipKind.INHERITED,
                error,
                Evidence.UPSTREAM_FAILURE,
                f"inherited from {upstream}",
                upstream,
                None,
            )
        kind = FlipKind.NEAR_TIE if margin <= error else FlipKind.REAL
        return kind, error, Evidence.CANDIDATE_LOGITS, note, "", None

    def classify_generated(
        self, frame: int, codebook: int, ref_row: npt.NDArray[Any], margin: float, cand_code: int
    ) -> _Found:
        """Logits count only when they reproduce the codes on both sides under the requested decision rule;
        then an upstream failure makes the flip inherited, else the margin against the candidate's error on
        the same network's other decisions makes it a near tie or real."""
        stage = "talker.logits" if codebook == 0 else "code_predictor.logits"
        ref_code = int(self.ref["codes"][frame, codebook])
        if self.replay(ref_row, frame, codebook) != ref_code:
            note = f"the reference's {stage} do not reproduce its code under {self.rule_words(codebook)}"
            return FlipKind.UNCLASSIFIED, None, Evidence.NONE, note, "", None
        sources = [(self.cand, Evidence.CANDIDATE_LOGITS, False)]
        run = self.forced_run
        if run is not None and run.dump.meta.forces(ForcedInput.CODES):
            sources.append((run.dump.tensors, Evidence.FORCED_RUN, True))
        for tensors, evidence, forced in sources:
            cand_row = self.cand_decision_logits(tensors, frame, codebook)
            if cand_row is None:
                continue
            run_name = "teacher-forced run's" if forced else "candidate's"
            picked = self.replay(cand_row, frame, codebook)
            if picked != cand_code:
                raw = int(np.argmax(cand_row))
                if ref_code in (picked, raw):
                    note = (
                        f"replayed: the {run_name} {stage} pick {picked} under {self.rule_words(codebook)} "
                        f"(raw argmax {raw}), the reference's code, yet it emitted {cand_code}: its decision "
                        "rule differs (repetition penalty, suppression or sampling)"
                    )
                    return FlipKind.DECISION_RULE, None, evidence, note, "", picked
                note = (
                    f"the {run_name} {stage} do not reproduce its code: they pick {picked} under "
                    f"{self.rule_words(codebook)}, it emitted {cand_code}"
                )
                return FlipKind.UNCLASSIFIED, None, evidence, note, "", picked
            upstream = self.upstream_failure()
            if upstream:
                note = f"inherited from {upstream}: the {run_name} {stage} reproduce its code"
                return FlipKind.INHERITED, None, Evidence.UPSTREAM_FAILURE, note, upstream, picked
            bound = self.other_decisions_error(tensors, frame, codebook, forced)
            if bound is None:
                note = f"the {run_name} {stage} reproduce its code, but no other decision bounds its error"
                return FlipKind.UNCLASSIFIED, None, evidence, note, "", picked
            error, where = bound
            kind = FlipKind.NEAR_TIE if margin <= error else FlipKind.REAL
            return kind, error, evidence, f"2 x max logit error of the {run_name} {stage} {where}", "", picked
        upstream = self.upstream_failure()
        if upstream:
            return (
                FlipKind.INHERITED,
                None,
                Evidence.UPSTREAM_FAILURE,
                f"inherited from {upstream}",
                upstream,
                None,
            )
        found = self.results.get(stage)  # a code-predictor flip is bounded by code-predictor logits only
        if found is not None and found.status is Status.PASS and "max_abs" in found.metrics:
            error = 2.0 * found.metrics["max_abs"]
            note = f"2 x the candidate's measured max logit error in {stage} ({found.note or 'all rows'})"
            if margin <= error:
                return FlipKind.NEAR_TIE, error, Evidence.MEASURED_ERROR, note, "", None
            note += ": a larger margin, but measured on other decisions without this one's logits"
            return FlipKind.UNCLASSIFIED, error, Evidence.MEASURED_ERROR, note, "", None
        note = f"no {stage} of this decision in the candidate's dumps (free or teacher-forced)"
        return FlipKind.UNCLASSIFIED, None, Evidence.NONE, note, "", None

    def replay(self, row: npt.NDArray[Any], frame: int, codebook: int) -> int:
        """The code the requested greedy rule picks from raw logits: special tokens suppressed (codebook range
        only) and, for the talker, the repetition penalty on codebook-0 codes already generated (the code
        predictor has none)."""
        values = row[: self.codebook_size()].astype(np.float64)
        penalty = float(self.meta.sampling.get("repetition_penalty", 1.0))
        if codebook == 0 and penalty != 1.0 and frame:
            seen = np.unique(self.ref["codes"][:frame, 0])  # earlier codes agree on both sides
            values[seen] = np.where(values[seen] > 0, values[seen] / penalty, values[seen] * penalty)
        return int(np.argmax(values))

    def rule_words(self, codebook: int) -> str:
        penalty = float(self.meta.sampling.get("repetition_penalty", 1.0))
        if codebook == 0:
            return f"the requested rule (greedy, repetition penalty {penalty:g}, special tokens suppressed)"
        return "the requested rule (greedy, no repetition penalty in the code predictor)"

    def upstream_failure(self) -> str:
        """The first failed stage so far that shapes generated codes ("" if none), then the teacher-forced
        run's, which shows a stage with the reference's inputs."""
        for key, found in self.results.items():  # the logits are the decision's own numbers, not upstream
            if found.status is Status.FAIL and found.group in DECISION_UPSTREAM and found.kind != "logits":
                return key
        run = self.forced_run
        first = None if run is None else run.comparison.first_failure
        if first is not None and first.group in DECISION_UPSTREAM and first.kind != "logits":
            return f"{first.key} (teacher-forced)"
        return ""

    def other_decisions_error(
        self, tensors: Mapping[str, npt.NDArray[Any]], frame: int, codebook: int, forced: bool
    ) -> tuple[float, str] | None:
        """2 x the largest logit error of the same network over its other decisions made on the reference's
        inputs (free run: the steps before this one; teacher-forced: every other step), with where."""
        key = "talker.logits" if codebook == 0 else "code_predictor.logits"
        cand, ref = tensors[key], self.ref[key]
        rows = min(len(cand), len(ref))
        if codebook == 0:
            keep = np.arange(rows) != frame if forced else np.arange(rows) < frame
            size = self.codebook_size()
            a, b = ref[:rows, :size][keep], cand[:rows, :size][keep]
        else:
            mask = np.ones((rows, ref.shape[1]), dtype=bool)
            if forced:
                mask[frame, codebook - 1] = False
            else:
                mask[frame:] = False
                mask[frame, : codebook - 1] = True
            a, b = ref[:rows][mask], cand[:rows][mask]
        if a.size == 0:
            return None
        where = "on every other decision" if forced else "on the decisions before this one"
        return 2.0 * float(np.max(np.abs(a.astype(np.float64) - b))), where

    def stage_failed(self, key: str) -> bool:
        return key in self.results and self.results[key].status is Status.FAIL

    def ref_decision_logits(self, frame: int, codebook: int) -> npt.NDArray[Any]:
        if codebook == 0:
            row: npt.NDArray[Any] = self.ref["talker.logits"][frame, : self.codebook_size()]
            return row
        found: npt.NDArray[Any] = self.ref["code_predictor.logits"][frame, codebook - 1]
        return found

    def cand_decision_logits(
        self, tensors: Mapping[str, npt.NDArray[Any]], frame: int, codebook: int
    ) -> npt.NDArray[Any] | None:
        """A candidate's logits of the decision that picked codes[frame, codebook] (codebook range only)."""
        key = "talker.logits" if codebook == 0 else "code_predictor.logits"
        cand, ref = tensors.get(key), self.ref[key]
        if cand is None or cand.shape[1:] != ref.shape[1:] or len(cand) <= frame:
            return None
        row: npt.NDArray[Any] = (
            cand[frame, : self.codebook_size()] if codebook == 0 else cand[frame, codebook - 1]
        )
        return row

    def codebook_size(self) -> int:
        """Codebook 0's range: talker ids above it are special tokens (suppressed; EOS is ignored here)."""
        if "code_predictor.logits" in self.ref:
            return int(self.ref["code_predictor.logits"].shape[-1])
        return int(self.ref["talker.logits"].shape[-1])

    def compare_logits(self, key: str) -> None:
        ref, cand = self.ref[key], self.cand[key]
        if ref.shape[1:] != cand.shape[1:]:
            self.result(key, Status.FAIL, note=f"shape {cand.shape} differs from the reference's {ref.shape}")
            return
        rows = min(len(ref), len(cand))
        note = ""
        found = None
        if "codes" in self.ref and "codes" in self.cand and not self.meta.forces(ForcedInput.CODES):
            found = _first_divergence(self.ref["codes"], self.cand["codes"])
        mask = None
        if key == "talker.logits":
            if found is not None:
                rows = min(rows, found[0] + 1)
                note = f"rows 0-{rows - 1}: later steps follow different codes"
            size = self.codebook_size()
            a, b = ref[:rows, :size], cand[:rows, :size]
        else:
            mask = np.ones((rows, ref.shape[1]), dtype=bool)
            if found is not None:
                frame, codebook = found
                mask[frame:] = False
                if frame < rows:
                    mask[frame, :codebook] = True  # step j predicts codebook j + 1 from codebooks 0..j
                note = f"steps before frame {frame} codebook {codebook}: later steps follow different codes"
            a, b = ref[:rows][mask], cand[:rows][mask]
        if a.size == 0:
            self.result(key, Status.SKIP, note=note or "no comparable rows")
            return
        bad = _nonfinite_note("candidate", b)
        if bad:
            self.result(key, Status.FAIL, metrics={"nonfinite": float(np.mean(~np.isfinite(b)))}, note=bad)
            return
        metrics = logits_metrics(a, b)
        metrics["rows"] = float(len(a))
        if len(ref) != len(cand):
            note = "; ".join(
                x for x in (note, f"{len(cand)} rows, reference {len(ref)}: common rows compared") if x
            )
        gated = self.gated(key, metrics, note=note)
        rule = self.profile.rule(key, "kl")
        if gated.status is Status.FAIL and rule is not None:
            rows_kl = np.array([logits_metrics(x[None], y[None])["kl"] for x, y in zip(a, b, strict=True)])
            past = np.flatnonzero(rows_kl > rule.limit)
            if past.size:  # talker rows are steps; code-predictor rows run frame by frame, then step
                frame = int(past[0]) if mask is None else int(np.argwhere(mask)[past[0]][0])
                self.mark_onset(gated, f"{frame_unit(key)} {frame}")


def frame_unit(key: str) -> str:
    """What a frame index of `key` counts: the decoder's input frames include an ICL clip's."""
    group = stage_of(key).group
    if group == "codec_decoder":
        return "decoder frame"
    if key == "talker.logits":
        return "talker step"
    if group in CLIP_GROUPS:
        return "clip frame"
    return "output frame" if group == "output" else "frame"


def describe_divergence(divergence: Divergence) -> str:
    bound = "unknown" if divergence.candidate_error is None else f"{divergence.candidate_error:.3g}"
    return (
        f"frame {divergence.frame}, codebook {divergence.codebook}: reference {divergence.reference_code}, "
        f"candidate {divergence.candidate_code}; reference margin {divergence.reference_margin:.3g}, "
        f"candidate error bound {bound} -> {divergence.kind.value.replace('_', ' ')} "
        f"(evidence: {divergence.evidence_note})"
    )


def _equal(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b))


def compare_dumps(
    reference: StageDump, candidate: StageDump, profile: Profile, forced_run: ForcedRun | None = None
) -> Comparison:
    """Compare `candidate` with `reference` stage by stage; `forced_run` is evidence for code divergences."""
    check_same_request(reference.meta, candidate.meta)
    comparer = _Comparer(reference, candidate, profile, forced_run)
    stages = comparer.run()
    return Comparison(
        mode="forced" if candidate.meta.forced else "free",
        forced=candidate.meta.forced,
        profile=profile.name,
        stages=tuple(stages),
        divergences=tuple(comparer.divergences),
    )


def first_difference(a: StageDump, b: StageDump) -> list[str]:
    """Keys whose tensors are not bit-identical (or present on one side only): the determinism check."""
    keys = set(a.tensors) | set(b.tensors)
    return sorted(
        (
            k
            for k in keys
            if k not in a.tensors or k not in b.tensors or not _equal(a.tensors[k], b.tensors[k])
        ),
        key=stage_sort_key,
    )
