"""A parity session, end to end: settle the request (from a port's dump header, flags only override), capture
the reference, run or read the candidate, compare, write the dumps and reports. The CLI and the notebooks'
`report.ensure_parity` call `run_session`."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qtts_eval import fixtures
from qtts_eval.errors import ParityError, QttsEvalError
from qtts_eval.parity.capture import HookedReference
from qtts_eval.parity.dumps import DumpMeta, StageDump, read_dump, write_dump
from qtts_eval.parity.faults import FAULTS
from qtts_eval.parity.profiles import Profile, profile_for_precision, profile_named
from qtts_eval.parity.report import write_reports
from qtts_eval.parity.run import ParityResult, compare_files, compare_pipeline, reference_dump
from qtts_eval.parity.sweep import Sweep, SweepRow, write_sweep_reports
from qtts_eval.pipelines.base import CloneMode, ForcedInput, PipelineConfig, Request, Sampling

REFERENCE_CODEC_DTYPE = "float32"  # HookedReference's codec dtype unless a candidate option says otherwise
FAULT_PREFIX = "fault:"  # CANDIDATE naming a planted fault, e.g. "fault:talker-weight"
REFERENCE_DUMP = "reference.safetensors"  # file names under the session's output directory
FREE_DUMP = "candidate.free.safetensors"
FORCED_DUMP = "candidate.forced.safetensors"
CANDIDATE_STDERR = "candidate.stderr.log"  # a subprocess candidate's stderr, beside its dumps


@dataclass(frozen=True)
class ParitySettings:
    """The request both sides run and the reference's checkpoint: what a dump header records."""

    model: str  # model ref of the reference (preset, path or hub id); a port's dump names its own
    voice: str  # fixture voice whose clip and transcript are the reference audio
    text: str  # text to speak
    language: str  # language argument
    mode: CloneMode  # voice-clone mode
    max_frames: int  # frame budget; random weights never emit EOS
    seed: int  # torch seed before generation
    non_streaming_mode: bool  # the talker prompt layout (see REFERENCE-NOTES)

    def request(self) -> Request:
        return Request.for_voice(
            fixtures.load_fixtures().voice(self.voice),
            self.text,
            self.language,
            self.mode,
            max_frames=self.max_frames,
            seed=self.seed,
            # Greedy without repetition penalty: the captured logits are exactly what the choice was made on.
            sampling=Sampling(repetition_penalty=1.0),
            non_streaming_mode=self.non_streaming_mode,  # both sides, in-process or over the wire
        )


# Settings of an in-process candidate run with no flags: a few frames of a short text on the tiny checkpoint.
DEFAULT_SETTINGS = ParitySettings(
    model="tiny",
    voice="slt",
    text="Hello there.",
    language="english",
    mode=CloneMode.ICL,
    max_frames=32,  # with the 58-frame clip the decoder sees 89 frames, past its 72-frame attention window
    seed=0,
    non_streaming_mode=False,
)


def settings_from_header(meta: DumpMeta, source: str) -> ParitySettings:
    """The settings a dump's header records; fields it cannot record (an unnamed voice or model) are refused
    by `resolve_settings` unless a flag gives them."""
    return ParitySettings(
        model=meta.model_ref,
        voice=meta.voice,
        text=meta.text,
        language=meta.language,
        mode=_mode(meta.clone_mode, source),
        max_frames=meta.max_frames,
        seed=meta.seed,
        non_streaming_mode=meta.non_streaming_mode,
    )


def _mode(value: str, source: str) -> CloneMode:
    try:
        return CloneMode(value)
    except ValueError:
        known = ", ".join(m.value for m in CloneMode)
        raise ParityError(f"{source}: clone_mode {value!r} is not one of {known}") from None


def resolve_settings(
    header: DumpMeta | None, overrides: Mapping[str, Any], source: str = ""
) -> ParitySettings:
    """The header's settings (or the defaults when there is no dump), with every non-None override applied."""
    base = DEFAULT_SETTINGS if header is None else settings_from_header(header, source)
    given = {name: value for name, value in overrides.items() if value is not None}
    unknown = set(given) - {f.name for f in dataclasses.fields(ParitySettings)}
    if unknown:
        raise ParityError(f"unknown parity settings {sorted(unknown)}")
    if "mode" in given:
        given["mode"] = _mode(str(given["mode"]), "--mode")
    settings = dataclasses.replace(base, **given)
    for name, flag in (("model", "--model"), ("voice", "--voice")):
        if not getattr(settings, name):
            raise ParityError(f"{source}: the dump header names no {name}; pass {flag}")
    return settings


def _over_the_wire(candidate: str) -> bool:
    """A ws:// URL, or a worker command line (it has spaces): a candidate behind docs/protocol.md."""
    return candidate.startswith(("ws://", "wss://")) or len(candidate.split()) > 1


def _is_dump(candidate: str) -> bool:
    return not _over_the_wire(candidate) and (candidate.endswith(".safetensors") or Path(candidate).is_file())


def _candidate_pipeline(
    candidate: str,
    base: PipelineConfig,
    codec_dtype: str | None,
    extra_options: Mapping[str, Any],
    stderr_log: Path,
) -> tuple[Any, str | None]:
    """The candidate pipeline (model, device and dtype from `base`) and the codec dtype it runs in (None: a
    wire candidate, which says its own precision in its hello); a subprocess candidate's stderr goes to
    `stderr_log`."""
    from qtts_eval import pipelines
    from qtts_eval.wire.pipelines import ProcessOptions

    if candidate.startswith(("ws://", "wss://")):
        return pipelines.create("websocket", PipelineConfig(options={"url": candidate})), None
    if _over_the_wire(candidate):
        # `{model_dir}` in the command is the reference's checkpoint: both sides start from the same weights.
        config = PipelineConfig(
            model=base.model, options={"command": candidate, "stderr_log": str(stderr_log)}
        )
        return pipelines.create("worker", config), None
    if candidate == "reference" or candidate.startswith(FAULT_PREFIX):
        codec = codec_dtype or REFERENCE_CODEC_DTYPE
        config = dataclasses.replace(base, options={"codec_dtype": codec})
        name = candidate.removeprefix(FAULT_PREFIX)
        if candidate == "reference":
            return HookedReference(config), codec
        if name not in FAULTS:
            raise ParityError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}")
        return HookedReference(config, fault=FAULTS[name]()), codec
    options = {} if codec_dtype is None else {"codec_dtype": codec_dtype}
    if issubclass(pipelines.pipeline_class(candidate).options_schema, ProcessOptions):
        options["stderr_log"] = str(stderr_log)
    config = dataclasses.replace(base, options={**options, **extra_options})  # e.g. a port's threads
    return pipelines.create(candidate, config), codec_dtype or base.dtype


class _Sides:
    """The reference and a pipeline candidate, loaded once for every request of a session or sweep (the
    reference's model and prompt layout, and the candidate's precision and profile, are the session's)."""

    def __init__(
        self,
        candidate: str,
        settings: ParitySettings,
        *,
        profile: str | None,
        device: str,
        candidate_dtype: str,
        candidate_codec_dtype: str | None,
        candidate_options: Mapping[str, Any],
        out: Path,
    ) -> None:
        self.name = candidate
        self.pipeline, codec_dtype = _candidate_pipeline(  # an unknown candidate fails before any load
            candidate,
            PipelineConfig(model=settings.model, device=device, dtype=candidate_dtype),
            candidate_codec_dtype,
            candidate_options,
            out / CANDIDATE_STDERR,
        )
        self.reference = _reference(settings, device)
        self.pipeline.load()
        try:
            # The precision asked for, never the one a candidate declares (a lower one needs --profile).
            self.profile = _profile(profile, candidate_dtype, codec_dtype or candidate_dtype)
        except BaseException:
            self.pipeline.close()
            raise

    def compare(
        self, settings: ParitySettings, out: Path, forced_inputs: Collection[ForcedInput]
    ) -> ParityResult:
        """One request: capture the reference, run the candidate free and teacher-forced, write reports."""
        _check_layout(self.pipeline.describe().get("layouts"), settings)  # before either side runs
        ref_dump = _capture_reference(self.reference, settings, out)
        result = compare_pipeline(
            ref_dump,
            self.pipeline,
            settings.request(),
            self.profile,
            self.name,
            forced_inputs=forced_inputs,
            dump_dir=out,
        )
        if not _over_the_wire(self.name):  # the suite wrote these: complete them for a bare `parity DUMP`
            for name in (FREE_DUMP, FORCED_DUMP):
                _name_voice(out / name, settings.voice)
        write_reports(result, out)
        return result

    def close(self) -> None:
        self.pipeline.close()
        self.reference.close()


def _name_voice(path: Path, voice: str) -> None:
    """Write the fixture voice into a dump header that names none (the request carries only its audio)."""
    if not path.is_file():
        return
    dump = read_dump(path)
    if not dump.meta.voice:
        write_dump(StageDump(dataclasses.replace(dump.meta, voice=voice), dump.tensors), path)


def _check_layout(layouts: object, settings: ParitySettings) -> None:
    """A candidate that declares its prompt layout per mode (hello.implementation.layouts, docs/protocol.md)
    must build the one this request asks for; otherwise parity would compare two different prompts."""
    if not isinstance(layouts, dict):
        return
    mode = settings.mode.value
    if mode not in layouts:
        raise ParityError(f"the candidate serves no {mode} mode (its layouts: {layouts}); pass --mode")
    if layouts[mode] != settings.non_streaming_mode:
        flag = "--non-streaming-mode" if layouts[mode] else "--no-non-streaming-mode"
        raise ParityError(
            f"in {mode} mode the candidate builds only the non_streaming_mode {layouts[mode]} prompt layout, "
            f"the request asks for {settings.non_streaming_mode}; pass {flag} to compare that layout"
        )


def _reference(settings: ParitySettings, device: str) -> HookedReference:
    reference = HookedReference(PipelineConfig(model=settings.model, device=device))
    reference.load()
    return reference


def _capture_reference(reference: HookedReference, settings: ParitySettings, out: Path) -> StageDump:
    """The reference's checked-deterministic dump of `settings`' request, written under `out`."""
    captured = reference_dump(reference, settings.request())
    ref_dump = StageDump(dataclasses.replace(captured.meta, voice=settings.voice), captured.tensors)
    out.mkdir(parents=True, exist_ok=True)
    write_dump(ref_dump, out / REFERENCE_DUMP)
    return ref_dump


def run_session(
    candidate: str,
    out: Path,
    overrides: Mapping[str, Any] | None = None,
    *,
    profile: str | None = None,
    device: str = "cpu",
    candidate_dtype: str = "float32",
    candidate_codec_dtype: str | None = None,
    forced_dump: Path | None = None,
    forced_inputs: Collection[ForcedInput] = tuple(ForcedInput),
    candidate_options: Mapping[str, Any] | None = None,
) -> ParityResult:
    """One parity run of `candidate` ("reference", "fault:NAME", a registered STAGE_DUMPS pipeline, a ws://
    URL or worker command line of a candidate declaring stage_dumps, or a port's dump file), written under
    `out` (dumps, report.html/.md/.json); returns the result.

    A dump's header supplies the request and the reference's model; `overrides` (ParitySettings fields,
    None = not given) replace header fields. The profile is `profile` when given, else the default of the
    reference's precision (profiles.DEFAULT_PROFILES): a dump declaring a lower one needs `profile`."""
    dump_path = Path(candidate) if _is_dump(candidate) else None
    header = read_dump(dump_path).meta if dump_path is not None else None
    settings = resolve_settings(header, overrides or {}, source=str(dump_path or "parity"))
    if dump_path is not None and header is not None:
        ref_dump = _capture_reference(_reference(settings, device), settings, out)
        # The precision of the work the suite exports (the reference's), never the header's own claim.
        chosen = _profile(profile, ref_dump.meta.dtype, ref_dump.meta.codec_dtype)
        result = compare_files(ref_dump, dump_path, forced_dump, chosen)
        for written, dump in ((FREE_DUMP, result.free_dump), (FORCED_DUMP, result.forced_dump)):
            if dump is not None:  # kept beside the reference so report.load_parity can recompute
                write_dump(dump, out / written)
        write_reports(result, out)
        return result
    sides = _Sides(
        candidate,
        settings,
        profile=profile,
        device=device,
        candidate_dtype=candidate_dtype,
        candidate_codec_dtype=candidate_codec_dtype,
        candidate_options=candidate_options or {},
        out=out,
    )
    try:
        return sides.compare(settings, out, forced_inputs)
    finally:
        sides.close()


@dataclass(frozen=True)
class SweepRequest:
    """One request of a sweep: a fixture text (or a given text), a mode and a voice."""

    text_id: str  # text fixture id, "" when `text` was given directly
    text: str  # what is spoken
    language: str  # its language argument
    mode: CloneMode
    voice: str

    @property
    def slug(self) -> str:
        """Its report's subdirectory under the sweep's output directory."""
        return f"{self.text_id or 'text'}-{self.mode.value}-{self.voice}"


def sweep_requests(
    text_ids: Sequence[str],
    modes: Sequence[str],
    voices: Sequence[str],
    text: str | None,
    language: str | None,
) -> list[SweepRequest]:
    """Every fixture text (or the one `text`) × mode × voice; unknown ids fail here, before anything loads."""
    fixture_set = fixtures.load_fixtures()
    text_ids, modes, voices = (list(dict.fromkeys(given)) for given in (text_ids, modes, voices))
    if text is not None and text_ids:
        raise ParityError("give either --text or --fixture, not both")
    for voice in voices:
        fixture_set.voice(voice)  # FixtureError with suggestions
    texts = [
        (text_id, fixture.text, language or fixture.language)
        for text_id in text_ids
        for fixture in (fixture_set.text(text_id),)
    ] or [("", text or DEFAULT_SETTINGS.text, language or DEFAULT_SETTINGS.language)]
    return [
        SweepRequest(text_id, spoken, lang, _mode(mode, "--mode"), voice)
        for text_id, spoken, lang in texts
        for mode in modes or [DEFAULT_SETTINGS.mode.value]
        for voice in voices or [DEFAULT_SETTINGS.voice]
    ]


def run_sweep(
    candidate: str,
    out: Path,
    requests: Sequence[SweepRequest],
    overrides: Mapping[str, Any] | None = None,
    *,
    profile: str | None = None,
    device: str = "cpu",
    candidate_dtype: str = "float32",
    candidate_codec_dtype: str | None = None,
    forced_inputs: Collection[ForcedInput] = tuple(ForcedInput),
    candidate_options: Mapping[str, Any] | None = None,
) -> Sweep:
    """Parity of `candidate` (as run_session, but not a dump file) on every request, each report under
    `out/<request slug>`, and the sweep's summary (sweep.json/.md/.html) in `out`. Both sides load once; a
    request that raises (a crashed candidate, a refused request) is an `error` row and the sweep goes on.
    `overrides` (model, frames, seed, prompt layout) apply to every request."""
    if _is_dump(candidate):
        raise ParityError(f"{candidate}: a dump holds one request; a sweep needs a candidate that runs")
    if not requests:
        raise ParityError("a sweep needs at least one request")
    settings = [
        resolve_settings(None, {**(overrides or {}), **_request_fields(request)}) for request in requests
    ]
    sides = _Sides(
        candidate,
        settings[0],
        profile=profile,
        device=device,
        candidate_dtype=candidate_dtype,
        candidate_codec_dtype=candidate_codec_dtype,
        candidate_options=candidate_options or {},
        out=out,
    )
    rows = []
    try:
        for request, setting in zip(requests, settings, strict=True):
            try:
                result = sides.compare(setting, out / request.slug, forced_inputs)
            except QttsEvalError as exc:
                rows.append(
                    SweepRow.failed(
                        request.slug, request.text_id, request.mode.value, request.voice, str(exc)
                    )
                )
                continue
            rows.append(SweepRow.of(request.slug, request.text_id, result))
    finally:
        sides.close()
    sweep = Sweep(candidate, sides.profile.name, settings[0].model, tuple(rows))
    write_sweep_reports(sweep, out)
    return sweep


def _request_fields(request: SweepRequest) -> dict[str, Any]:
    return {
        "text": request.text,
        "language": request.language,
        "mode": request.mode.value,
        "voice": request.voice,
    }


def _profile(name: str | None, dtype: str, codec_dtype: str) -> Profile:
    return profile_named(name) if name is not None else profile_for_precision(dtype, codec_dtype)


def load_session(out: Path) -> ParityResult:
    """The ParityResult of a `run_session` output directory, recomputed from its dumps and its profile."""
    import json

    from qtts_eval.parity.run import compare

    report = out / "report.json"
    if not report.is_file():
        raise ParityError(f"{out}: no report.json; run qtts-eval parity with --out {out} first")
    chosen = profile_named(json.loads(report.read_text(encoding="utf-8"))["profile"]["name"])
    forced = out / FORCED_DUMP
    return compare(
        json.loads(report.read_text(encoding="utf-8"))["candidate"],
        chosen,
        read_dump(out / REFERENCE_DUMP),
        read_dump(out / FREE_DUMP),
        read_dump(forced) if forced.exists() else None,
    )
