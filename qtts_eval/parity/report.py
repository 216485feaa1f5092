"""Parity reports: self-contained HTML (inline PNG plots, inline WAV players), Markdown and JSON."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from qtts_eval.parity.compare import ONE_FRAME_ONLY, Comparison, StageResult, Status, describe_divergence
from qtts_eval.parity.dumps import time_axis
from qtts_eval.parity.run import ParityResult
from qtts_eval.units import SAMPLE_RATE_HZ

PLOT_DPI = 80  # keeps the embedded PNGs small
FLOOR_REL_L2 = 1e-12  # plotted in place of an exact 0 on the log axis

# What to check next at the first failure of a group: the usual causes in ports, from the planted faults
# (faults.py) and from driving real ports (REFERENCE-NOTES), chosen by what the report knows (`check_next`).
DECODER_WINDOW_FRAME = 72  # the codec decoder's sliding attention window (speech tokenizer config)


def _hint(stage: StageResult, result: ParityResult, comparison: Comparison) -> str:
    """The hint for `stage`, its group's first failure, given the mode, what passed and how it differs."""
    icl = result.reference.meta.clone_mode == "icl"
    passed = {s.key for s in comparison.stages if s.status is Status.PASS}
    group = stage.group
    if stage.onset.endswith(ONE_FRAME_ONLY):
        return (
            f"what is done at {stage.onset.removesuffix(ONE_FRAME_ONLY)} alone (the other frames match): an "
            "edge (the first frame's padding or cache start, the last frame's trim, a chunk boundary)"
        )
    if group == "inputs":
        if stage.key.startswith("inputs.") and stage.key.endswith("text_ids"):
            return "the chat template and tokenizer: text ids are the full chat-template ids of the prompt"
        return "the reference clip's sample rate (24 kHz, resampled before both encoders)"
    if group == "speaker_encoder":
        if "spk.mel" in passed:
            return (
                "the speaker encoder after its mel input (which matches): block kernels, attentive pooling "
                "and its epsilon, the dtype of its convolutions"
            )
        return "the speaker encoder's mel front end (128 bins, n_fft 1024, hop 256, fmax 12 kHz)"
    if group == "codec_encoder":
        return (
            "the clip's framing (the last partial frame), Mimi's causal padding, and the encoder kernels' "
            "dtype (f16 kernels move near-tie codebook choices)"
        )
    if group == "talker":
        return (
            "RoPE (interleaved multimodal sections, rope_theta), the attention mask and the prompt layout "
            "(non_streaming_mode); the first failing layer localises it"
        )
    if group == "code_predictor":
        return (
            "the code predictor's attention mask, the order of its lm_head per step and its codec embeddings"
        )
    if group == "codec_decoder":
        if stage.onset == f"decoder frame {DECODER_WINDOW_FRAME}":
            return (
                f"the decoder transformer's {DECODER_WINDOW_FRAME}-frame sliding attention window: the "
                f"error starts exactly where a frame can no longer see frame 0"
            )
        if _off_by_stride(stage, result, comparison):
            return "a transposed convolution's trim: the length differs by exactly one upsampling stride"
        if stage.onset:
            return f"what changes at {stage.onset} (chunked decoding's chunk edges and left context)"
        return (
            "the decoder kernels' dtype (f16 convolutions cost SNR: a decoder near 60 dB points there) and "
            "SnakeBeta"
        )
    if group == "output":
        decoded = comparison.stage("codec_dec.wav")
        if decoded is None or decoded.status is Status.MISSING:
            return "the codec decoder, which was not dumped: dump codec_dec.* to localise"
        if decoded.status is Status.FAIL:
            return "the codec decoder first: its audio already differs (codec_dec.wav)"
        if icl:
            return "the cut of the reference part in ICL (the decoder's audio matches) and the sample format"
        return "the output sample format and length (the decoder's audio matches)"
    return ""


def _off_by_stride(stage: StageResult, result: ParityResult, comparison: Comparison) -> bool:
    """True when the candidate's length along the time axis differs by exactly one frame's share of it."""
    dump = result.forced_dump if comparison.forced and result.forced_dump is not None else result.free_dump
    ref, cand = result.reference.tensors.get(stage.key), dump.tensors.get(stage.key)
    axis = time_axis(stage.key)
    codes = result.reference.tensors.get("codec_dec.codes")
    if ref is None or cand is None or axis is None or codes is None or ref.ndim != cand.ndim:
        return False
    stride = int(ref.shape[axis]) // max(int(codes.shape[-1]), 1)
    return stride > 1 and abs(int(ref.shape[axis]) - int(cand.shape[axis])) == stride


def _png(figure: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=PLOT_DPI, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _wav(samples: npt.NDArray[Any]) -> str:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.clip(samples, -1.0, 1.0), SAMPLE_RATE_HZ, format="WAV", subtype="PCM_16")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _comparisons(result: ParityResult) -> list[Comparison]:
    return [c for c in (result.free, result.forced) if c is not None]


def plots(result: ParityResult) -> dict[str, str]:
    """Base64 PNGs by name: error by stage, per-codebook match, waveform overlay, spectrograms.

    Drawn on whatever backend is active (matplotlib picks Agg where there is no display) and closed after
    saving: forcing Agg here would switch a notebook's inline backend off for every later plot."""
    import matplotlib.pyplot as plt

    found: dict[str, str] = {}
    fig, ax = plt.subplots(figsize=(11, 3.5))
    measured = {s.key for c in _comparisons(result) for s in c.stages if "rel_l2" in s.metrics}
    order = [key for key in result.reference.keys_in_order() if key in measured]
    for comparison in _comparisons(result):
        stages = [s for k in order if (s := comparison.stage(k)) is not None and "rel_l2" in s.metrics]
        errors = [max(s.metrics["rel_l2"], FLOOR_REL_L2) for s in stages]
        ax.plot([order.index(s.key) for s in stages], errors, marker="o", label=comparison.mode)
    limits = [(i, rule.limit) for i, key in enumerate(order) if (rule := result.profile.rule(key, "rel_l2"))]
    if limits:
        ax.step([i for i, _ in limits], [limit for _, limit in limits], where="mid", color="red",
                linestyle="--", label=f"{result.profile.name} limit")  # fmt: skip
    ax.set_xticks(range(len(order)), order)
    ax.set_yscale("log")
    ax.set_ylabel("relative L2 error")
    ax.set_title("Error by stage, with the profile's threshold (exact 0 drawn at 1e-12)")
    ax.tick_params(axis="x", rotation=90, labelsize=7)
    ax.legend()
    found["error_by_stage"] = _png(fig)

    fig, ax = plt.subplots(figsize=(6, 3))
    width = 0.4
    drawn = False
    for offset, comparison in enumerate(_comparisons(result)):
        for stage in comparison.stages:
            if stage.key == "codes" and stage.per_codebook:
                x = np.arange(len(stage.per_codebook)) + offset * width
                ax.bar(x, [100 * v for v in stage.per_codebook], width=width, label=comparison.mode)
                drawn = True
    ax.set_xlabel("codebook")
    ax.set_ylabel("exact match %")
    ax.set_ylim(0, 105)
    ax.set_title("Generated codes: match per codebook")
    if drawn:
        ax.legend()
    else:  # e.g. the candidate stopped before generating codes: an empty plot that says so
        ax.text(0.5, 0.5, "no generated codes compared", ha="center", va="center", transform=ax.transAxes)
    found["codebook_match"] = _png(fig)

    ref_wav, cand_wav = audio_pair(result)
    fig, ax = plt.subplots(figsize=(11, 2.5))
    ax.plot(np.arange(len(ref_wav)) / SAMPLE_RATE_HZ, ref_wav, lw=0.5, label="reference")
    ax.plot(np.arange(len(cand_wav)) / SAMPLE_RATE_HZ, cand_wav, lw=0.5, alpha=0.7, label="candidate")
    ax.set_xlabel("s")
    ax.legend()
    ax.set_title("Waveforms (output.wav)")
    found["waveform"] = _png(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 3), sharey=True)
    for ax, wav, title in ((axes[0], ref_wav, "reference"), (axes[1], cand_wav, "candidate")):
        if len(wav) >= 512:
            ax.specgram(wav, NFFT=512, Fs=SAMPLE_RATE_HZ, noverlap=384, cmap="magma")
        ax.set_title(f"Spectrogram: {title}")
        ax.set_xlabel("s")
    axes[0].set_ylabel("Hz")
    found["spectrogram"] = _png(fig)
    return found


def audio_pair(result: ParityResult) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    candidate = result.forced_dump if result.forced_dump is not None else result.free_dump
    return result.reference.tensors["output.wav"], candidate.tensors.get(
        "output.wav", np.zeros(0, np.float32)
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "value") and isinstance(value.value, str):
        return value.value
    return value


def check_next(result: ParityResult) -> dict[str, str]:
    """What to check next at the first failure of each failing group, free run first; a group's hint is
    chosen by the request's mode, the stages that passed and the kind of difference (shape, onset)."""
    hints: dict[str, str] = {}
    for comparison in _comparisons(result):
        for stage in comparison.group_failures:
            if stage.group not in hints and (hint := _hint(stage, result, comparison)):
                hints[stage.group] = f"{stage.key}: {hint}"
    return hints


def to_json(result: ParityResult) -> dict[str, Any]:
    """The machine-readable report."""
    first = result.first_failure
    coverage = result.coverage
    data: dict[str, Any] = _jsonable(
        {
            "verdict": result.verdict.value,
            "verdict_line": result.verdict_line(),
            "candidate": result.candidate,
            "profile": asdict(result.profile),
            "coverage": {"compared": list(coverage.compared), "not_covered": list(coverage.not_covered)},
            "undecided": list(result.undecided),
            "missing_taps": list(result.missing_taps()),
            "check_next": check_next(result),
            "first_failing_stage": None if first is None else _where(first),
            "reference_meta": asdict(result.reference.meta),
            "candidate_meta": asdict(result.free_dump.meta),
            "comparisons": [asdict(c) for c in _comparisons(result)],
        }
    )
    return data


def _where(stage: StageResult) -> dict[str, Any]:
    return {"key": stage.key, "group": stage.group, "note": stage.note, "metrics": dict(stage.metrics)}


def _diagnosis(result: ParityResult, data: dict[str, Any]) -> list[str]:
    """The report's opening lines as plain text: verdict, first failure with numbers, what to do next."""
    lines = [f"Verdict: {result.verdict_line()}"]
    first = result.first_failure
    if first is not None:
        numbers = ", ".join(f"{k}={_fmt(v)}" for k, v in first.metrics.items())
        lines.append(f"First failing stage: {first.key} ({first.group}): {first.note}"
                     + (f" [{numbers}]" if numbers else ""))  # fmt: skip
    lines += [f"Undecided: {reason}" for reason in result.undecided]
    for comparison in _comparisons(result):
        lines += [f"Divergence ({comparison.mode}) in {d.key} at {describe_divergence(d)}"
                  for d in comparison.divergences]  # fmt: skip
    lines += [f"Check next ({group}): {hint}" for group, hint in data["check_next"].items()]
    if data["missing_taps"]:
        lines.append(f"Taps that would localise this further: {', '.join(data['missing_taps'])}")
    return lines


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def to_markdown(result: ParityResult) -> str:
    data = to_json(result)
    lines = [
        f"# Parity: {result.candidate}",
        "",
        f"**Verdict: {data['verdict'].upper()}** (profile `{result.profile.name}`: "
        f"{result.profile.description})",
        "",
    ]
    lines += [f"- {line}" for line in _diagnosis(result, data)] + [""]
    meta = result.reference.meta
    lines += [
        f"Request: {meta.text!r} ({meta.language}), mode {meta.clone_mode}, non_streaming_mode "
        f"{meta.non_streaming_mode}, {meta.max_frames} frames, seed {meta.seed}; reference "
        f"{meta.implementation} {meta.dtype} on {meta.device}; "
        f"candidate {result.free_dump.meta.implementation} "
        f"{result.free_dump.meta.dtype}.",
        "",
    ]
    for comparison in _comparisons(result):
        lines += [f"## {_title(comparison)}", "", "| stage | status | metrics | note |", "|---|---|---|---|"]
        for stage in comparison.stages:
            metrics = ", ".join(f"{k}={_fmt(v)}" for k, v in stage.metrics.items())
            lines.append(f"| `{stage.key}` | {stage.status.value} | {metrics} | {stage.note} |")
        lines.append("")
    lines += ["## Thresholds", ""]
    lines += [f"- `{r.stages}` {r.metric} {r.bound} {r.limit:g}: {r.source}" for r in result.profile.rules]
    return "\n".join(lines) + "\n"


def _title(comparison: Comparison) -> str:
    if not comparison.forced:
        return "free-running"
    return "teacher-forced on " + ", ".join(f.value for f in comparison.forced)


_STATUS_COLOURS = {
    Status.PASS: "#d4f4d4",
    Status.FAIL: "#f8d0d0",
    Status.UNCLASSIFIED: "#f8ecc8",
    Status.INHERITED: "#f8e0d0",
    Status.SKIP: "#eeeeee",
    Status.MISSING: "#f4f4f4",
    Status.INFO: "#dde8f8",
}


def to_html(result: ParityResult) -> str:
    """A single HTML file with no external assets."""
    images = plots(result)
    ref_wav, cand_wav = audio_pair(result)
    data = to_json(result)
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Parity: {esc(result.candidate)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}</style></head><body>",
        f"<h1>Parity: {esc(result.candidate)}</h1>",
        f"<p id='verdict'><b>Verdict: {data['verdict'].upper()}</b> — profile "
        f"<code>{esc(result.profile.name)}</code>: {esc(result.profile.description)}</p>",
        "<ul id='diagnosis'>",
        *(f"<li>{esc(line)}</li>" for line in _diagnosis(result, data)),
        "</ul>",
    ]
    parts.append("<h2>Audio</h2>")
    for label, wav in (("reference", ref_wav), ("candidate", cand_wav)):
        parts.append(f"<p>{label}: <audio controls src='data:audio/wav;base64,{_wav(wav)}'></audio></p>")
    for name in ("error_by_stage", "codebook_match", "waveform", "spectrogram"):
        parts.append(f"<p><img alt='{name}' src='data:image/png;base64,{images[name]}'></p>")
    for comparison in _comparisons(result):
        parts.append(f"<h2>{esc(_title(comparison))}</h2><table><tr><th>stage</th><th>group</th><th>status</th>"
                     "<th>metrics</th><th>note</th></tr>")  # fmt: skip
        for stage in comparison.stages:
            metrics = ", ".join(f"{k}={_fmt(v)}" for k, v in stage.metrics.items())
            parts.append(
                f"<tr style='background:{_STATUS_COLOURS[stage.status]}'><td>{esc(stage.key)}</td>"
                f"<td>{esc(stage.group)}</td><td>{stage.status.value}</td><td>{esc(metrics)}</td>"
                f"<td>{esc(stage.note)}</td></tr>"
            )
        parts.append("</table>")
    parts.append("<h2>Thresholds and their sources</h2><ul>")
    parts += [f"<li><code>{esc(r.stages)}</code> {r.metric} {r.bound} {r.limit:g}: {esc(r.source)}</li>"
              for r in result.profile.rules]  # fmt: skip
    parts.append(f"</ul><h2>Metadata</h2><pre>{esc(json.dumps(data['reference_meta'], indent=1))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_reports(result: ParityResult, out_dir: Path) -> dict[str, Path]:
    """Write report.html, report.md and report.json under `out_dir`; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"html": out_dir / "report.html", "md": out_dir / "report.md", "json": out_dir / "report.json"}
    paths["html"].write_text(to_html(result), encoding="utf-8")
    paths["md"].write_text(to_markdown(result), encoding="utf-8")
    paths["json"].write_text(json.dumps(to_json(result), indent=2) + "\n", encoding="utf-8")
    return paths
