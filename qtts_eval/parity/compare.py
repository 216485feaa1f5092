"""Compare two stage dumps under a tolerance profile: per-stage metrics, code divergences and their margins.

Free-running dumps are compared only where both sides saw the same discrete inputs: per-step logits up to the
first divergent code, the codec decoder and audio only when every code agrees. Teacher-forced dumps (the
candidate received the reference's codes, reference codes and speaker embedding) compare everything.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from qtts_eval.errors import ParityError
from qtts_eval.parity.dumps import DumpMeta, StageDump, stage_of
from qtts_eval.parity.profiles import Profile, Rule
from qtts_eval.units import SAMPLE_RATE_HZ

SNR_CAP_DB = 200.0  # reported for identical signals instead of infinity (keeps JSON finite)
MEL_BINS = 80  # log-mel distance: mel bands
MEL_N_FFT = 1024  # log-mel distance: FFT size, samples (42.7 ms at 24 kHz)
MEL_HOP = 256  # log-mel distance: hop, samples (10.7 ms at 24 kHz)
MEL_FLOOR_DB = -100.0  # log-mel distance: power floor, dB, so silence does not dominate
DISCRETE_INPUTS = ("inputs.text_ids", "inputs.ref_text_ids", "codec_enc.codes")  # gate everything downstream


class Status(str, enum.Enum):
    """Outcome of one stage."""

    PASS = "pass"  # within every threshold of the profile
    FAIL = "fail"  # a threshold, shape or exactness requirement broken
    SKIP = "skip"  # not comparable in this mode (an upstream discrete input differs) or missing on one side
    INFO = "info"  # computed and shown, never gated (report-only profile, reference-only tensors)


class FlipKind(str, enum.Enum):
    """What a code divergence is."""

    NEAR_TIE = "near_tie"  # the reference's margin is within twice the candidate's error at that decision
    REAL = "real"  # the margin is larger than the candidate's error explains: a genuine disagreement


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
    note: str = ""  # why it failed or was skipped, in words
    per_codebook: tuple[float, ...] = ()  # codes stages: exact-match fraction per codebook


@dataclass(frozen=True)
class Divergence:
    """The first place where two code sequences differ, and whether the reference's choice was a near tie."""

    key: str  # "codes" or "codec_enc.codes"
    frame: int  # frame index of the first difference
    codebook: int  # codebook index (0-15) within that frame
    reference_code: int  # what the reference chose
    candidate_code: int  # what the candidate chose
    reference_margin: float  # reference's best minus second-best logit, or 2nd-best minus best distance
    candidate_error: float  # bound on how far the candidate's numbers could move that margin
    kind: FlipKind  # near tie or real disagreement


@dataclass(frozen=True)
class Comparison:
    """All stage results of one reference/candidate pair."""

    mode: str  # "free" (free-running greedy) or "forced" (teacher-forced)
    profile: str  # profile name
    stages: tuple[StageResult, ...]  # in pipeline order
    divergences: tuple[Divergence, ...]  # code divergences found

    @property
    def passed(self) -> bool:
        return all(stage.status is not Status.FAIL for stage in self.stages)

    @property
    def first_failure(self) -> StageResult | None:
        return next((stage for stage in self.stages if stage.status is Status.FAIL), None)


def check_same_request(reference: DumpMeta, candidate: DumpMeta) -> None:
    """Refuse to compare dumps of different requests, prompt layouts or clone modes."""
    for name in DumpMeta.MUST_MATCH:
        ref_value, cand_value = getattr(reference, name), getattr(candidate, name)
        if ref_value != cand_value:
            raise ParityError(
                f"the dumps are of different requests: {name} is {ref_value!r} in the reference and "
                f"{cand_value!r} in the candidate; rerun the candidate with the reference's settings"
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


def _log_mel_db(wav: npt.NDArray[Any]) -> npt.NDArray[Any]:
    import librosa

    mel = librosa.feature.melspectrogram(
        y=wav.astype(np.float32), sr=SAMPLE_RATE_HZ, n_fft=MEL_N_FFT, hop_length=MEL_HOP, n_mels=MEL_BINS
    )
    db: npt.NDArray[Any] = np.maximum(10.0 * np.log10(np.maximum(mel, 1e-30)), MEL_FLOOR_DB)
    return db


def audio_metrics(ref: npt.NDArray[Any], cand: npt.NDArray[Any]) -> dict[str, float]:
    """SNR (dB, candidate error as noise), mean log-mel distance (dB) and duration ratio deviation."""
    n = min(len(ref), len(cand))
    a, b = ref[:n].astype(np.float64), cand[:n].astype(np.float64)
    noise = float(np.sum((a - b) ** 2))
    signal = float(np.sum(a**2))
    snr = SNR_CAP_DB if noise == 0.0 else min(SNR_CAP_DB, 10.0 * math.log10(max(signal, 1e-30) / noise))
    mel = float(np.mean(np.abs(_log_mel_db(a) - _log_mel_db(b)))) if n >= MEL_N_FFT else 0.0
    ratio = len(cand) / len(ref) if len(ref) else math.inf
    return {"snr_db": snr, "mel_db": mel, "duration_dev": abs(ratio - 1.0), **tensor_metrics(a, b)}


def _first_divergence(ref: npt.NDArray[Any], cand: npt.NDArray[Any]) -> tuple[int, int] | None:
    n = min(len(ref), len(cand))
    where = np.argwhere(ref[:n] != cand[:n])
    if len(where):
        return int(where[0][0]), int(where[0][1])
    return (n, 0) if len(ref) != len(cand) else None


class _Comparer:
    def __init__(self, reference: StageDump, candidate: StageDump, profile: Profile) -> None:
        self.ref = reference.tensors
        self.cand = candidate.tensors
        self.profile = profile
        self.forced = candidate.meta.forced
        self.results: dict[str, StageResult] = {}
        self.divergences: list[Divergence] = []

    def result(self, key: str, status: Status, **extra: Any) -> StageResult:
        stage = stage_of(key)
        if self.profile.report_only and status is Status.FAIL:
            status = Status.INFO
        found = StageResult(key=key, group=stage.group, kind=stage.kind, status=status, **extra)
        self.results[key] = found
        return found

    def gated(self, key: str, metrics: dict[str, float], note: str = "") -> StageResult:
        checks = []
        for metric, value in metrics.items():
            rule = self.profile.rule(key, metric)
            if rule is not None:
                checks.append(Check(metric=metric, value=value, rule=rule, ok=rule.ok(value)))
        failed = [c for c in checks if not c.ok]
        if failed and not note:
            note = "; ".join(
                f"{c.metric} {c.value:.3g} breaks {c.rule.bound} {c.rule.limit:g}" for c in failed
            )
        status = Status.FAIL if failed else Status.PASS
        return self.result(key, status, metrics=metrics, checks=tuple(checks), note=note)

    def shape_ok(self, key: str) -> bool:
        a, b = self.ref[key], self.cand[key]
        if a.shape == b.shape:
            return True
        self.result(
            key, Status.FAIL, note=f"shape {tuple(b.shape)} differs from the reference's {tuple(a.shape)}"
        )
        return False

    def run(self) -> list[StageResult]:
        keys = sorted(set(self.ref) | set(self.cand), key=_order)
        upstream = None
        for key in keys:
            if key not in self.ref or key not in self.cand:
                side = "candidate" if key not in self.cand else "reference"
                self.result(key, Status.SKIP, note=f"missing in the {side} dump")
                continue
            stage = stage_of(key)
            if stage.kind == "margin":
                self.result(key, Status.INFO, metrics={"min": float(self.ref[key].min(initial=math.inf))})
            elif stage.kind == "ids":
                self.compare_ids(key, upstream)
            elif stage.group in ("talker", "code_predictor", "codec_decoder", "output") and upstream:
                self.result(key, Status.SKIP, note=f"not comparable: {upstream}")
            elif key in ("codes", "codec_enc.codes"):
                self.compare_codes(key)
            elif stage.kind == "logits":
                self.compare_logits(key)
            elif stage.kind == "audio":
                if self.codes_differ():
                    self.result(key, Status.SKIP, note="not comparable: generated codes differ")
                else:  # lengths may differ: the duration metric gates that
                    self.gated(key, audio_metrics(self.ref[key], self.cand[key]))
            elif stage.group == "codec_decoder" and self.codes_differ():
                self.result(key, Status.SKIP, note="not comparable: generated codes differ")
            elif self.shape_ok(key):
                self.gated(key, tensor_metrics(self.ref[key], self.cand[key]))
            # A teacher-forced candidate was given the reference's codes, so its own encoder's do not gate.
            gates = key in DISCRETE_INPUTS and not (self.forced and key == "codec_enc.codes")
            if gates and not upstream and not _equal(self.ref[key], self.cand[key]):
                upstream = f"upstream {key} differs"
        return [self.results[key] for key in keys]

    def codes_differ(self) -> bool:
        return (
            "codes" in self.ref and "codes" in self.cand and not _equal(self.ref["codes"], self.cand["codes"])
        )

    def compare_ids(self, key: str, upstream: str | None) -> None:
        if key == "codec_dec.codes" and upstream:
            self.result(key, Status.SKIP, note=f"not comparable: {upstream}")
        elif _equal(self.ref[key], self.cand[key]):
            self.result(key, Status.PASS, metrics={"exact": 1.0})
        elif key == "codec_dec.codes" and self.codes_differ():
            self.result(key, Status.SKIP, note="not comparable: generated codes differ")
        else:
            self.result(key, Status.FAIL, note="ids differ; they must match exactly")

    def compare_codes(self, key: str) -> None:
        ref, cand = self.ref[key], self.cand[key]
        if ref.ndim != 2 or cand.ndim != 2 or ref.shape[1] != cand.shape[1]:
            self.result(key, Status.FAIL, note=f"codes shape {cand.shape} vs reference {ref.shape}")
            return
        n = min(len(ref), len(cand))
        per_codebook = tuple(float(x) for x in (ref[:n] == cand[:n]).mean(0)) if n else ()
        metrics = {"exact": float((ref[:n] == cand[:n]).mean()) if n else 0.0, "frames": float(len(cand))}
        found = _first_divergence(ref, cand)
        if found is None:
            self.result(key, Status.PASS, metrics=metrics, per_codebook=per_codebook)
            return
        frame, codebook = found
        metrics["first_divergent_frame"] = float(frame)
        if frame >= n:
            self.result(key, Status.FAIL, metrics=metrics, per_codebook=per_codebook,
                        note=f"{len(cand)} frames, reference has {len(ref)}")  # fmt: skip
            return
        divergence = self.classify(key, frame, codebook)
        self.divergences.append(divergence)
        where = (
            f"frame {frame}, codebook {codebook}: reference {divergence.reference_code}, candidate "
            f"{divergence.candidate_code}; reference margin {divergence.reference_margin:.3g}, "
            f"candidate error bound {divergence.candidate_error:.3g} -> "
            f"{divergence.kind.value.replace('_', ' ')}"
        )
        if self.forced and key == "codes":
            status, note = Status.FAIL, f"teacher-forced codes were not followed at {where}"
        elif self.profile.exact_codes:
            status, note = Status.FAIL, f"first divergence at {where} ({self.profile.exact_codes_source})"
        elif divergence.kind is FlipKind.REAL:
            status, note = Status.FAIL, f"real disagreement at {where}"
        else:
            status, note = Status.PASS, f"near-tie flip at {where}"
        self.result(key, status, metrics=metrics, per_codebook=per_codebook, note=note)

    def classify(self, key: str, frame: int, codebook: int) -> Divergence:
        ref_code, cand_code = int(self.ref[key][frame, codebook]), int(self.cand[key][frame, codebook])
        if key == "codec_enc.codes":
            margin = (
                float(self.ref["codec_enc.margin"][frame, codebook])
                if "codec_enc.margin" in self.ref
                else 0.0
            )
            name = "codec_enc.rvq_in." + ("semantic" if codebook == 0 else "acoustic")
            error, numeric_ok = math.inf, False
            if name in self.ref and name in self.cand and self.ref[name].shape == self.cand[name].shape:
                # Earlier codebooks of this frame agree, so the residuals differ exactly by the input
                # difference; a distance moves by at most that much, a gap by at most twice.
                error = 2.0 * float(np.linalg.norm(self.ref[name][frame] - self.cand[name][frame]))
                numeric_ok = (
                    self.results.get(name, None) is None or self.results[name].status is not Status.FAIL
                )
        else:
            ref_row, cand_row = self.decision_logits(frame, codebook)
            top = np.sort(ref_row)[-2:]
            margin = float(top[1] - top[0])
            # Each of the two competing logits can move by the largest logit error, so the gap by twice it.
            error = 2.0 * float(np.max(np.abs(ref_row - cand_row))) if cand_row is not None else math.inf
            stage = "talker.logits" if codebook == 0 else "code_predictor.logits"
            numeric_ok = cand_row is not None and (
                stage not in self.results or self.results[stage].status is not Status.FAIL
            )
        kind = FlipKind.NEAR_TIE if numeric_ok and margin <= error else FlipKind.REAL
        return Divergence(key, frame, codebook, ref_code, cand_code, margin, error, kind)

    def decision_logits(self, frame: int, codebook: int) -> tuple[npt.NDArray[Any], npt.NDArray[Any] | None]:
        """Both sides' logits of the decision that picked codes[frame, codebook] (codebook range only)."""
        if codebook == 0:
            size = self.codebook_size()
            ref_row = self.ref["talker.logits"][frame, :size]
            cand = self.cand.get("talker.logits")
            ok = (
                cand is not None and cand.shape[1] == self.ref["talker.logits"].shape[1] and len(cand) > frame
            )
            return ref_row, (cand[frame, :size] if ok and cand is not None else None)
        ref_row = self.ref["code_predictor.logits"][frame, codebook - 1]
        cand = self.cand.get("code_predictor.logits")
        ok = (
            cand is not None
            and cand.shape[1:] == self.ref["code_predictor.logits"].shape[1:]
            and len(cand) > frame
        )
        return ref_row, (cand[frame, codebook - 1] if ok and cand is not None else None)

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
        if "codes" in self.ref and "codes" in self.cand and not self.forced:
            found = _first_divergence(self.ref["codes"], self.cand["codes"])
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
        if a.shape != b.shape or a.size == 0:
            self.result(key, Status.SKIP, note=note or "no comparable rows")
            return
        self.gated(key, logits_metrics(a, b))
        if note and self.results[key].status is Status.PASS:
            self.results[key] = StageResult(**{**self.results[key].__dict__, "note": note})


def _order(key: str) -> tuple[int, str]:
    from qtts_eval.parity.dumps import stage_sort_key

    return stage_sort_key(key)


def _equal(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b))


def compare_dumps(reference: StageDump, candidate: StageDump, profile: Profile) -> Comparison:
    """Compare `candidate` with `reference` stage by stage; the mode follows the candidate's `forced` flag."""
    check_same_request(reference.meta, candidate.meta)
    comparer = _Comparer(reference, candidate, profile)
    stages = comparer.run()
    return Comparison(
        mode="forced" if candidate.meta.forced else "free",
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
        key=_order,
    )
