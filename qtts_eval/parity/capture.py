"""Capture stage dumps from the official qwen-tts modules with forward hooks (removable handles).

The reference is never re-implemented: the official `create_voice_clone_prompt` and `generate_voice_clone` run
unchanged, and hooks copy what the official modules receive and return. Teacher forcing is done the same
way: a hook on the talker's `codec_head` and on each code-predictor `lm_head` leaves every logit but the
forced code at a large negative value, so the official decoding loop picks the forced code and
conditions on it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from qtts_eval import checkpoints
from qtts_eval.environment import package_version
from qtts_eval.errors import ParityError
from qtts_eval.parity.dumps import DumpMeta, StageDump
from qtts_eval.pipelines.base import (
    AudioChunk,
    Capability,
    CloneMode,
    Event,
    ForcedInput,
    ForcedInputs,
    PipelineConfig,
    Request,
    StreamEnd,
)
from qtts_eval.pipelines.reference import ReferencePipeline, generation_kwargs
from qtts_eval.units import SAMPLE_RATE_HZ

FORCE_FLOOR = (
    -1.0e4
)  # logit given to every non-forced token: far below any real logit, finite for the processors
_VERSIONED = ("qwen-tts", "torch", "transformers")


class Fault:
    """A deliberate, real modification of the reference run; the default changes nothing.

    Subclasses (qtts_eval.parity.faults) override one method each and name the stage group that must catch
    them.
    """

    name: ClassVar[str] = "none"  # CLI name, e.g. "no-resample"
    group: ClassVar[str] = ""  # the dumps.Stage.group at which the comparison must fail
    description: ClassVar[str] = "no fault"  # one line for reports
    # Whether edit_checkpoint changes files: declared up front, so a fault that edits nothing costs no copy
    # of the checkpoint (2.4 GB for 0.6b-base).
    edits_checkpoint: ClassVar[bool] = False

    def edit_checkpoint(self, directory: Path) -> None:
        """Modify a private copy of the checkpoint in place (only called when edits_checkpoint is set)."""

    def ref_audio(self, audio: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """The reference clip as this implementation hands it to the encoders (labelled 24 kHz)."""
        return audio

    def speaker_embedding(self, model: Any, audio: npt.NDArray[np.float32]) -> Any:
        """A speaker embedding computed another way, or None to keep the official one."""
        return None

    @contextlib.contextmanager
    def installed(self, model: Any) -> Iterator[None]:
        """Apply run-time modifications to the loaded model for the duration of one run."""
        yield


def fault_copy_dir(source: Path, fault: str) -> Path:
    """Where the cache keeps the copy of checkpoint `source` edited by the fault named `fault`."""
    tag = hashlib.sha256(f"{source}|{fault}".encode()).hexdigest()[:12]
    return checkpoints.cache_root() / "parity-faults" / f"{fault}-{tag}"


def _np(tensor: Any) -> npt.NDArray[Any]:
    value = tensor.detach().to("cpu")
    if value.is_floating_point():
        value = value.float()
    return np.array(value.numpy())  # copies: hooks see buffers the model reuses


class _Recorder:
    """Forward hooks on the official modules; `handles` are removed when the run ends."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.single: dict[str, npt.NDArray[Any]] = {}  # keys whose last call wins
        self.chunks: dict[str, list[npt.NDArray[Any]]] = {}  # decoder keys concatenated over calls
        self.talker_logits: list[npt.NDArray[Any]] = []
        self.cp_logits: list[list[npt.NDArray[Any]]] = []
        self.codes: list[npt.NDArray[Any]] = []
        self.in_prefill = False
        self.handles: list[Any] = []

    def _hook(self, module: Any, fn: Callable[..., Any], *, pre: bool = False, kwargs: bool = False) -> None:
        if pre:
            self.handles.append(module.register_forward_pre_hook(fn, with_kwargs=kwargs))
        else:
            self.handles.append(module.register_forward_hook(fn))

    def _set(self, key: str) -> Callable[..., None]:
        def hook(_m: Any, _args: Any, out: Any) -> None:
            self.single[key] = _np(out[0] if isinstance(out, tuple) else out)[0]

        return hook

    def _chunk(self, key: str, take: Callable[[Any], Any]) -> Callable[..., None]:
        def hook(_m: Any, args: Any, out: Any = None) -> None:
            self.chunks.setdefault(key, []).append(_np(take(args if out is None else out))[0])

        return hook

    def install(self) -> None:
        inner = self.model.model
        spk = inner.speaker_encoder
        self._hook(spk, lambda _m, args: self.single.__setitem__("spk.mel", _np(args[0])[0]), pre=True)
        for i, block in enumerate(spk.blocks):
            self._hook(block, self._set(f"spk.block.{i:02d}"))
        self._hook(spk, self._set("spk.embedding"))

        mimi = inner.speech_tokenizer.model.encoder
        self._hook(mimi.encoder, self._codec_input, pre=True)
        self._hook(mimi.downsample, self._set("codec_enc.latent"))
        quantizer = mimi.quantizer
        for name, rvq in (
            ("semantic", quantizer.semantic_residual_vector_quantizer),
            ("acoustic", quantizer.acoustic_residual_vector_quantizer),
        ):
            self._hook(rvq.input_proj, self._rvq_in(name))

        talker = inner.talker
        self._hook(talker.model, self._talker_pre, pre=True, kwargs=True)
        for i, layer in enumerate(talker.model.layers):
            self._hook(layer, self._prefill(f"talker.prefill.layer.{i:02d}"))
        self._hook(talker.model.norm, self._prefill("talker.prefill.norm"))
        self._hook(talker.codec_head, lambda _m, _a, out: self.talker_logits.append(_np(out[0, -1])))
        for j, head in enumerate(talker.code_predictor.lm_head):
            self._hook(head, self._cp(j))
        self._hook(talker, self._talker_out)

        dec = inner.speech_tokenizer.model.decoder
        self._hook(dec, self._chunk("codec_dec.codes", lambda args: args[0]), pre=True)
        self._hook(dec.pre_conv, self._chunk("codec_dec.dequant", lambda args: args[0]), pre=True)
        self._hook(dec.pre_conv, self._chunk("codec_dec.pre_conv", lambda out: out))
        self._hook(
            dec.pre_transformer, self._chunk("codec_dec.pre_transformer", lambda out: out.last_hidden_state)
        )
        for i, blocks in enumerate(dec.upsample):
            self._hook(blocks[-1], self._chunk(f"codec_dec.upsample.{i:02d}", lambda out: out))
        for i, block in enumerate(dec.decoder):
            self._hook(block, self._chunk(f"codec_dec.block.{i:02d}", lambda out: out))
        self._hook(dec, self._chunk("codec_dec.wav", lambda out: out[:, 0]))

    def _codec_input(self, _m: Any, args: Any) -> None:
        self.single["codec_enc.input"] = _np(args[0])[0, 0]

    def _rvq_in(self, name: str) -> Callable[..., None]:
        def hook(_m: Any, _args: Any, out: Any) -> None:
            self.single[f"codec_enc.rvq_in.{name}"] = _np(out)[0].T

        return hook

    def _talker_pre(self, _m: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        embeds = kwargs.get("inputs_embeds")
        self.in_prefill = embeds is not None and embeds.shape[1] > 1
        if self.in_prefill:
            self.single["talker.prefill.embeds"] = _np(embeds)[0]

    def _prefill(self, key: str) -> Callable[..., None]:
        record = self._set(key)

        def hook(module: Any, args: Any, out: Any) -> None:
            if self.in_prefill:
                record(module, args, out)

        return hook

    def _cp(self, step: int) -> Callable[..., None]:
        def hook(_m: Any, _args: Any, out: Any) -> None:
            if step == 0:
                self.cp_logits.append([])
            self.cp_logits[-1].append(_np(out[0, -1]))

        return hook

    def _talker_out(self, _m: Any, _args: Any, out: Any) -> None:
        codec_ids = out.hidden_states[1]
        if codec_ids is not None:
            self.codes.append(_np(codec_ids)[0])

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def tensors(self) -> dict[str, npt.NDArray[Any]]:
        found = dict(self.single)
        for key, parts in self.chunks.items():
            axis = 0 if key == "codec_dec.pre_transformer" else -1  # [T, C] there, [..., T] elsewhere
            found[key] = np.concatenate(parts, axis=axis)
        if self.talker_logits:
            found["talker.logits"] = np.stack(self.talker_logits)
        if self.cp_logits:
            found["code_predictor.logits"] = np.stack([np.stack(frame) for frame in self.cp_logits])
        if self.codes:
            found["codes"] = np.stack(self.codes).astype(np.int64)
        return found


def _codebook_margins(model: Any, rvq_inputs: dict[str, npt.NDArray[Any]], codes: Any) -> npt.NDArray[Any]:
    """Second-best minus best codebook distance per frame and codebook, from the official codebooks.

    The distances are those of Mimi's nearest-centroid search (torch.cdist on float32 and argmin, as the
    official `quantize`), over every frame the encoder produced, as the official search sees them: cdist's
    matrix-product path rounds differently for another row count, which flips near ties. The winners are
    checked against the official codes so the margins belong to those decisions.
    """
    import torch

    quantizer = model.model.speech_tokenizer.model.encoder.quantizer
    frames = codes.shape[0]
    columns = []
    for name, rvq, count in (
        ("semantic", quantizer.semantic_residual_vector_quantizer, 1),
        ("acoustic", quantizer.acoustic_residual_vector_quantizer, codes.shape[1] - 1),
    ):
        embeds = [layer.codebook.embed.detach().cpu() for layer in rvq.layers[:count]]
        # The residual stays in the model's dtype, as in the official loop; only the distances are float32.
        residual = torch.from_numpy(rvq_inputs[f"codec_enc.rvq_in.{name}"]).to(embeds[0].dtype)
        for embed in embeds:
            dists = torch.cdist(residual[None].float(), embed[None].float(), p=2)[0]
            nearest = dists.topk(2, dim=-1, largest=False).values[:frames]
            columns.append((nearest[:, 1] - nearest[:, 0]).numpy())
            chosen = dists.argmin(dim=-1)
            official = torch.as_tensor(codes[:, len(columns) - 1])
            if not torch.equal(chosen[:frames], official):
                raise ParityError(
                    "codec encoder margins: recomputed nearest codes differ from the official ones"
                )
            residual = residual - embed[chosen]
    return np.stack(columns, axis=1).astype(np.float32)


class _Forcer:
    """Teacher-forcing hooks: the official decoding picks `codes` frame by frame."""

    def __init__(self, model: Any, codes: npt.NDArray[np.int64]) -> None:
        self.codes = codes
        self.talker_step = 0
        self.cp_frame = -1
        talker = model.model.talker
        self.handles = [talker.codec_head.register_forward_hook(self._talker)]
        self.handles += [
            head.register_forward_hook(self._cp(j)) for j, head in enumerate(talker.code_predictor.lm_head)
        ]

    @staticmethod
    def _force(out: Any, code: int) -> Any:
        forced = out.clone()
        forced[..., -1, :] = FORCE_FLOOR
        forced[..., -1, code] = 0.0
        return forced

    def _talker(self, _m: Any, _args: Any, out: Any) -> Any:
        step, self.talker_step = self.talker_step, self.talker_step + 1
        return self._force(out, int(self.codes[step, 0])) if step < len(self.codes) else None

    def _cp(self, j: int) -> Callable[..., Any]:
        def hook(_m: Any, _args: Any, out: Any) -> Any:
            if j == 0:
                self.cp_frame += 1
            if self.cp_frame < len(self.codes):
                return self._force(out, int(self.codes[self.cp_frame, j + 1]))
            return None

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _versions() -> dict[str, str]:
    return {package: version for package in _VERSIONED if (version := package_version(package)) is not None}


class HookedReference(ReferencePipeline):
    """The official package, run through its public API with capture hooks; optionally with a `Fault`.

    Declares STAGE_DUMPS and FORCED_CODES. Loads like the reference pipeline (same options), except that
    codec_dtype defaults to "float32": ports keep the codec in float32, and in bfloat16 the random-weight
    Mimi encoder loses all precision.
    """

    capabilities = frozenset({Capability.STAGE_DUMPS, Capability.FORCED_CODES, Capability.SEEDED_SAMPLING})

    def __init__(self, config: PipelineConfig, fault: Fault | None = None) -> None:
        super().__init__(dataclasses.replace(config, options={"codec_dtype": "float32", **config.options}))
        self.fault = fault or Fault()

    def checkpoint_dir(self, resolved: Path) -> Path:
        return self._faulted_copy(resolved)

    def _faulted_copy(self, source: Path) -> Path:
        """A private modified copy of the checkpoint when the fault edits files (cached by source, fault)."""
        if not self.fault.edits_checkpoint:
            return source
        target = fault_copy_dir(source, self.fault.name)
        if target.is_dir():
            return target
        staging = checkpoints.staging_dir(target)
        shutil.copytree(source, staging, dirs_exist_ok=True)
        self.fault.edit_checkpoint(staging)
        staging.rename(target)
        return target

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "fault": self.fault.name}

    def stream(self, request: Request) -> Iterator[Event]:
        import time

        dump = self.capture(request)
        audio = dump.tensors["output.wav"].astype(np.float32)
        yield AudioChunk(audio, time.monotonic_ns())
        yield StreamEnd(frames_generated=len(dump.tensors["codes"]), codes=dump.tensors["codes"])

    def write_stage_dump(
        self, request: Request, path: Path, *, forced: ForcedInputs | None = None
    ) -> StageDump:
        from qtts_eval.parity.dumps import write_dump

        dump = self.capture(request, forced=forced)
        write_dump(dump, path)
        return dump

    def capture(self, request: Request, *, forced: ForcedInputs | None = None) -> StageDump:
        """Run `request` once through the official API and return every stage the hooks saw."""
        import torch

        if self.model is None:
            raise ParityError("capture() called before load()")
        model = self.model
        icl = request.mode is CloneMode.ICL
        audio = self.fault.ref_audio(request.ref_audio)
        recorder = _Recorder(model)
        forcer: _Forcer | None = None
        with self.fault.installed(model):
            recorder.install()
            try:
                items = model.create_voice_clone_prompt(
                    ref_audio=(audio, SAMPLE_RATE_HZ), ref_text=request.ref_text, x_vector_only_mode=not icl
                )
                item = items[0]
                own_embedding = self.fault.speaker_embedding(model, audio)
                if own_embedding is not None:
                    item = dataclasses.replace(item, ref_spk_embedding=own_embedding)
                if icl:
                    recorder.single["codec_enc.codes"] = _np(item.ref_code).astype(np.int64)
                if forced is not None and forced.spk_embedding is not None:
                    embedding = torch.from_numpy(forced.spk_embedding).to(item.ref_spk_embedding)
                    item = dataclasses.replace(item, ref_spk_embedding=embedding)
                if forced is not None and forced.ref_codes is not None and icl:
                    ref_code = torch.from_numpy(forced.ref_codes).to(item.ref_code.device)
                    item = dataclasses.replace(item, ref_code=ref_code)
                if forced is not None and forced.codes is not None:
                    forcer = _Forcer(model, forced.codes)
                torch.manual_seed(request.seed)
                wavs, rate = model.generate_voice_clone(
                    text=request.text,
                    language=request.language,
                    voice_clone_prompt=[item],
                    non_streaming_mode=self.prompt_layout(request),
                    **generation_kwargs(request),
                )
            finally:
                recorder.remove()
                if forcer is not None:
                    forcer.remove()
        if rate != SAMPLE_RATE_HZ:
            raise ParityError(f"the model returned {rate} Hz audio, expected {SAMPLE_RATE_HZ}")
        tensors = recorder.tensors()
        tensors["inputs.ref_audio"] = np.asarray(audio, dtype=np.float32)
        tensors["inputs.text_ids"] = self._token_ids(model._build_assistant_text(request.text))
        if icl:
            tensors["inputs.ref_text_ids"] = self._token_ids(model._build_ref_text(request.ref_text))
            tensors["codec_enc.margin"] = _codebook_margins(model, tensors, tensors["codec_enc.codes"])
        tensors["output.wav"] = np.asarray(wavs[0], dtype=np.float32)
        applied = (
            () if forced is None else tuple(f for f in forced.forced if icl or f is not ForcedInput.REF_CODES)
        )
        return StageDump(meta=self._meta(request, applied), tensors=tensors)

    def _token_ids(self, prompt: str) -> npt.NDArray[np.int64]:
        # The wrapper's own tokenisation helper, exactly as generate_voice_clone calls it.
        ids: npt.NDArray[np.int64] = _np(self.model._tokenize_texts([prompt])[0])[0].astype(np.int64)
        return ids

    def _meta(self, request: Request, forced: tuple[ForcedInput, ...]) -> DumpMeta:
        import torch

        sampling = request.sampling
        versions = _versions()
        return DumpMeta(
            implementation=f"qwen-tts {versions.get('qwen-tts', '?')}"
            + ("" if self.fault.name == "none" else f" + fault {self.fault.name}"),
            versions=versions,
            dtype=self.config.dtype,
            codec_dtype=self.options.codec_dtype or self.config.dtype,
            device=self.config.device,
            attn_implementation=self.config.attn_implementation,
            tf32={
                "matmul": bool(torch.backends.cuda.matmul.allow_tf32),
                "cudnn": bool(torch.backends.cudnn.allow_tf32),
            },
            seed=request.seed,
            sampling=dataclasses.asdict(sampling),
            clone_mode=request.mode.value,
            non_streaming_mode=self.prompt_layout(request),
            text=request.text,
            language=request.language,
            max_frames=request.max_frames,
            forced=forced,
            model_ref=self.config.model,
            weights_hash=self.resolved.weights_hash if self.resolved is not None else "",
        )
