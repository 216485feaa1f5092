"""One parity run: a deterministic reference dump, then the candidate free-running and teacher-forced."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qtts_eval.errors import ParityError
from qtts_eval.parity.capture import HookedReference
from qtts_eval.parity.compare import Comparison, compare_dumps, first_difference
from qtts_eval.parity.dumps import StageDump, read_dump
from qtts_eval.parity.profiles import Profile
from qtts_eval.pipelines.base import Capability, ForcedInputs, Pipeline, Request, StageDumper


@dataclass(frozen=True)
class ParityResult:
    """Everything a report shows."""

    candidate: str  # how the candidate was named (fault, pipeline or dump path)
    profile: Profile  # tolerance profile used
    reference: StageDump  # reference dump (checked deterministic)
    free_dump: StageDump  # candidate, free-running
    free: Comparison  # its comparison
    forced_dump: StageDump | None  # candidate, teacher-forced, when available
    forced: Comparison | None  # its comparison

    @property
    def passed(self) -> bool:
        return self.free.passed and (self.forced is None or self.forced.passed)


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
    teacher_forcing: bool = True,
    dump_dir: Path | None = None,
) -> ParityResult:
    """Run a STAGE_DUMPS pipeline free-running (and teacher-forced with FORCED_CODES), then compare."""
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
    if teacher_forcing and Capability.FORCED_CODES in pipeline.capabilities:
        forced_path = target / "candidate.forced.safetensors"
        pipeline.write_stage_dump(request, forced_path, forced=ForcedInputs.from_tensors(reference.tensors))
        forced_dump = read_dump(forced_path)
    return _result(name, profile, reference, free_dump, forced_dump)


def compare_files(
    reference: StageDump, free_path: Path, forced_path: Path | None, profile: Profile
) -> ParityResult:
    """Compare dumps a port wrote (free-running, and optionally teacher-forced from the reference dump)."""
    free_dump = read_dump(free_path)
    forced_dump = read_dump(forced_path) if forced_path is not None else None
    if forced_dump is not None and not forced_dump.meta.forced:
        raise ParityError(
            f"{forced_path}: header says forced=false; a teacher-forced dump must say forced=true"
        )
    return _result(str(free_path), profile, reference, free_dump, forced_dump)


def _result(
    name: str, profile: Profile, reference: StageDump, free_dump: StageDump, forced_dump: StageDump | None
) -> ParityResult:
    return ParityResult(
        candidate=name,
        profile=profile,
        reference=reference,
        free_dump=free_dump,
        free=compare_dumps(reference, free_dump, profile),
        forced_dump=forced_dump,
        forced=None if forced_dump is None else compare_dumps(reference, forced_dump, profile),
    )
