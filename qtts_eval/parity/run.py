"""One parity comparison: a deterministic reference dump against a candidate's free-running and teacher-forced
dumps, with a verdict that states what it covered."""

from __future__ import annotations

import enum
import fnmatch
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from qtts_eval.errors import ParityError
from qtts_eval.parity.capture import HookedReference
from qtts_eval.parity.compare import (
    COMPARED,
    Comparison,
    FlipKind,
    ForcedRun,
    StageResult,
    Status,
    compare_dumps,
    describe_divergence,
    first_difference,
)
from qtts_eval.parity.dumps import STAGES, StageDump, read_dump, required_keys, stage_of
from qtts_eval.parity.profiles import Profile
from qtts_eval.pipelines.base import Capability, ForcedInput, ForcedInputs, Pipeline, Request, StageDumper

NOT_COVERED_SHOWN = 6  # schema entries listed by name in the verdict line; the rest are counted


class Verdict(str, enum.Enum):
    """The outcome of a parity run; only PASS satisfies a `parity = "pass"` gate."""

    PASS = "pass"  # every compared stage within the profile, every required stage compared
    FAIL = "fail"  # a stage broke the profile, or a required stage is missing
    UNCLASSIFIED = "unclassified"  # nothing failed, but a divergence or a required stage could not be decided
    REPORT_ONLY = "report-only"  # a report-only profile: numbers shown, nothing judged


@dataclass(frozen=True)
class Coverage:
    """Which reference stages were compared in at least one of the runs."""

    compared: tuple[str, ...]  # reference keys compared (free or teacher-forced), pipeline order
    not_covered: tuple[str, ...]  # reference keys never compared: not dumped, or never comparable

    @property
    def total(self) -> int:
        return len(self.compared) + len(self.not_covered)

    def summary(self) -> str:
        """The not-covered keys by schema entry, e.g. "talker.prefill.layer.* (28), codec_dec.wav"."""
        counts: dict[str, int] = {}
        for key in self.not_covered:
            pattern = stage_of(key).pattern
            counts[pattern] = counts.get(pattern, 0) + 1
        parts = [pattern if count == 1 else f"{pattern} ({count})" for pattern, count in counts.items()]
        if len(parts) > NOT_COVERED_SHOWN:
            parts = [*parts[:NOT_COVERED_SHOWN], f"{len(parts) - NOT_COVERED_SHOWN} more"]
        return ", ".join(parts)


@dataclass(frozen=True)
class ParityResult:
    """Everything a report shows."""

    candidate: str  # how the candidate was named (fault, pipeline or dump path)
    profile: Profile  # tolerance profile used
    reference: StageDump  # reference dump (checked deterministic)
    free_dump: StageDump  # candidate, free-running
    free: Comparison  # its comparison (teacher-forced evidence applied to its divergences)
    forced_dump: StageDump | None  # candidate, teacher-forced, when available
    forced: Comparison | None  # its comparison

    @property
    def comparisons(self) -> tuple[Comparison, ...]:
        return tuple(c for c in (self.free, self.forced) if c is not None)

    @property
    def first_failure(self) -> StageResult | None:
        return next((c.first_failure for c in self.comparisons if c.first_failure is not None), None)

    @property
    def coverage(self) -> Coverage:
        keys = [k for k in self.reference.keys_in_order() if self.used(k) and stage_of(k).kind != "margin"]
        compared = {s.key for c in self.comparisons for s in c.stages if s.status in COMPARED}
        return Coverage(
            compared=tuple(k for k in keys if k in compared),
            not_covered=tuple(k for k in keys if k not in compared),
        )

    def used(self, key: str) -> bool:
        """Whether the request's mode uses `key`: x-vector prompts take no clip codes or transcript."""
        if self.reference.meta.clone_mode == "icl":
            return True
        return stage_of(key).group != "codec_encoder" and key != "inputs.ref_text_ids"

    @property
    def undecided(self) -> tuple[str, ...]:
        """Why the run cannot pass although nothing failed: unclassified divergences, uncompared required
        stages."""
        reasons = [
            f"{c.mode} {d.key} diverge at {describe_divergence(d)}"
            for c in self.comparisons
            for d in c.divergences
            if d.kind is FlipKind.UNCLASSIFIED
        ]
        covered = set(self.coverage.compared)
        for key in required_keys(self.reference.meta.clone_mode):
            if key not in covered:
                notes = [s.note for c in self.comparisons if (s := c.stage(key)) is not None and s.note]
                reasons.append(
                    f"required stage {key} was never compared ({'; '.join(notes) or 'not dumped'})"
                )
        return tuple(reasons)

    @property
    def verdict(self) -> Verdict:
        if self.profile.report_only:
            return Verdict.REPORT_ONLY
        if any(not c.passed for c in self.comparisons):
            return Verdict.FAIL
        return Verdict.UNCLASSIFIED if self.undecided else Verdict.PASS

    @property
    def passed(self) -> bool:
        return self.verdict is Verdict.PASS

    def verdict_line(self) -> str:
        """One line: the verdict, where it failed first, every failing group of each run (free, forced) with
        its first failing stage and onset, and how much was compared."""
        coverage = self.coverage
        counted = f"{len(coverage.compared)} of {coverage.total} stages"
        verdict = self.verdict
        if verdict is Verdict.FAIL and (first := self.first_failure) is not None:
            failing = ", ".join(
                f"{c.mode} {stage.group} at {stage.key}" + (f" (from {stage.onset})" if stage.onset else "")
                for c in self.comparisons
                for stage in c.group_failures
            )
            head = f"FAIL at {first.key} ({first.group}); failing: {failing}; compared {counted}"
        elif verdict is Verdict.UNCLASSIFIED:
            head = f"UNCLASSIFIED on {counted}: {self.undecided[0]}"
        else:
            head = f"{verdict.value.upper()} on {counted}"
        return head + (f"; not covered: {coverage.summary()}" if coverage.not_covered else "")

    def missing_taps(self) -> tuple[str, ...]:
        """Schema entries absent from every candidate run, used by the mode, and at or upstream of the first
        failing (or undecided) stage: the taps that would localise it further."""
        first = self.first_failure
        if first is None:
            divergent = [
                d.key for c in self.comparisons for d in c.divergences if d.kind is FlipKind.UNCLASSIFIED
            ]
            if not divergent:
                return ()
            first = next(s for c in self.comparisons if (s := c.stage(divergent[0])) is not None)
        limit = STAGES.index(stage_of(first.key))
        dumped = {
            k for c in self.comparisons for s in c.stages if s.status is not Status.MISSING for k in [s.key]
        }
        missing = {s.key for c in self.comparisons for s in c.stages if s.status is Status.MISSING} - dumped
        return tuple(
            stage.pattern
            for stage in STAGES[: limit + 1]
            if any(fnmatch.fnmatchcase(key, stage.pattern) and self.used(key) for key in missing)
        )


def reference_dump(reference: HookedReference, request: Request) -> StageDump:
    """Capture the reference twice and insist on bit-identical dumps before anything is compared."""
    first = reference.capture(request)
    second = reference.capture(request)
    differing = first_difference(first, second)
    if differing:
        raise ParityError(
            "the reference is not deterministic: two runs of the same request differ at "
            f"{', '.join(differing[:5])}"
            " (check seeds, TF32 and nondeterministic kernels before comparing a candidate)"
        )
    return first


def compare_pipeline(
    reference: StageDump,
    pipeline: Pipeline,
    request: Request,
    profile: Profile,
    name: str,
    *,
    forced_inputs: Collection[ForcedInput] = tuple(ForcedInput),
    dump_dir: Path | None = None,
) -> ParityResult:
    """Run a STAGE_DUMPS pipeline free-running, and teacher-forced on `forced_inputs` when it declares
    FORCED_CODES and any are asked for; then compare."""
    if Capability.STAGE_DUMPS not in pipeline.capabilities or not isinstance(pipeline, StageDumper):
        raise ParityError(
            f"pipeline {name!r} does not declare stage_dumps; compare a directory of its dumps instead"
        )
    target = dump_dir or Path.cwd()
    # The files the candidate wrote are what is compared, whether it ran here or behind the wire.
    free_path = target / "candidate.free.safetensors"
    pipeline.write_stage_dump(request, free_path)
    free_dump = read_dump(free_path)
    forced_dump = None
    if forced_inputs and Capability.FORCED_CODES in pipeline.capabilities:
        forced_path = target / "candidate.forced.safetensors"
        forced = ForcedInputs.from_tensors(reference.tensors, forced_inputs)
        pipeline.write_stage_dump(request, forced_path, forced=forced)
        forced_dump = read_dump(forced_path)
    return compare(name, profile, reference, free_dump, forced_dump)


def compare_files(
    reference: StageDump, free_path: Path, forced_path: Path | None, profile: Profile
) -> ParityResult:
    """Compare dumps a port wrote (free-running, and optionally teacher-forced from the reference dump)."""
    free_dump = read_dump(free_path)
    forced_dump = read_dump(forced_path) if forced_path is not None else None
    if free_dump.meta.forced:
        raise ParityError(
            f"{free_path}: header says forced={list(free_dump.meta.forced)}; pass it as --forced-dump"
        )
    if forced_dump is not None and not forced_dump.meta.forced:
        raise ParityError(
            f"{forced_path}: header forces nothing; a teacher-forced dump lists its forced inputs in 'forced'"
        )
    return compare(str(free_path), profile, reference, free_dump, forced_dump)


def compare(
    name: str, profile: Profile, reference: StageDump, free_dump: StageDump, forced_dump: StageDump | None
) -> ParityResult:
    """Compare the teacher-forced dump first, so its evidence can classify the free run's divergences."""
    forced = None if forced_dump is None else compare_dumps(reference, forced_dump, profile)
    evidence = None if forced_dump is None or forced is None else ForcedRun(forced_dump, forced)
    return ParityResult(
        candidate=name,
        profile=profile,
        reference=reference,
        free_dump=free_dump,
        free=compare_dumps(reference, free_dump, profile, evidence),
        forced_dump=forced_dump,
        forced=forced,
    )
