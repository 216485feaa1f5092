"""Cross-language tests of the Rust port kit (ports/rust/qtts-port-kit): its `replay` example, serving a
real reference dump of the tiny checkpoint, passes the conformance kit, streams the reference's audio and
codes, and writes stage dumps over the wire that the suite's parity comparison accepts, or fails at the
planted stage.

Needs cargo: a Rust toolchain is a prerequisite of the README's test command (docs/porting.md).
"""

from __future__ import annotations

import base64
import dataclasses
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qtts_eval import fixtures
from qtts_eval.cli import main
from qtts_eval.parity.capture import HookedReference
from qtts_eval.parity.compare import compare_dumps
from qtts_eval.parity.dumps import StageDump, read_dump, write_dump
from qtts_eval.parity.profiles import profile_for_precision
from qtts_eval.pipelines.base import CloneMode, ForcedInput, PipelineConfig, Request, Sampling
from qtts_eval.wire import protocol
from qtts_eval.wire.client import RemoteSession, Timeouts, WorkerChannel, collect
from qtts_eval.wire.conformance import check_target
from qtts_eval.wire.protocol import Encoding

KIT = Path(__file__).resolve().parent.parent / "ports" / "rust" / "qtts-port-kit"
FRAMES = 4  # frame budget of the replayed request: a capped run gives 3 frames
TIMEOUTS = Timeouts(start_s=60.0, message_s=60.0)  # the replay loads a small file; the CI machine is shared
# What the parity CLI asks for by default (qtts_eval.cli.parity), so the CLI test compares like with like.
TEXT, LANGUAGE, VOICE = "Hello there.", "english", "slt"


@pytest.fixture(scope="module")
def replay() -> Path:
    """The example with its WebSocket transport, built by cargo (debug: it only copies tensors)."""
    cargo = shutil.which("cargo")
    if cargo is None:
        pytest.fail(
            "cargo is not on PATH: the Rust toolchain is part of the test setup (README, Two commands)"
        )
    build = ["build", "--quiet", "--example", "replay", "--features", "websocket"]
    subprocess.run([cargo, *build, "--manifest-path", str(KIT / "Cargo.toml")], check=True)
    return KIT / "target" / "debug" / "examples" / "replay"


def make_request(mode: CloneMode) -> Request:
    return Request.for_voice(
        fixtures.load_fixtures().voice(VOICE),
        TEXT,
        LANGUAGE,
        mode,
        max_frames=FRAMES,
        seed=0,
        sampling=Sampling(repetition_penalty=1.0),
    )


@pytest.fixture(scope="module")
def request_() -> Request:
    return make_request(CloneMode.ICL)


@pytest.fixture(scope="module")
def hooked() -> HookedReference:
    pipeline = HookedReference(PipelineConfig(model="tiny"))
    pipeline.load()
    return pipeline


@pytest.fixture(scope="module")
def reference(
    hooked: HookedReference, request_: Request, tmp_path_factory: pytest.TempPathFactory
) -> tuple[StageDump, Path]:
    """A reference dump of the official package (tiny checkpoint), as `qtts-eval parity --out` writes it."""
    dump = hooked.capture(request_)
    return dump, write_dump(dump, tmp_path_factory.mktemp("reference") / "reference.safetensors")


@pytest.fixture(scope="module")
def xvector_reference(hooked: HookedReference, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same in x-vector mode: its audio is the decode of its codes alone, as the conformance kit's
    codes-decode rule (x-vector requests) checks; an ICL dump's audio was decoded after the reference
    codes."""
    dump = hooked.capture(make_request(CloneMode.XVECTOR))
    return write_dump(dump, tmp_path_factory.mktemp("xvector") / "reference.safetensors")


@pytest.mark.parametrize("transport", ["stdio", "websocket"])
def test_replay_passes_every_conformance_rule(
    replay: Path, xvector_reference: Path, tmp_path: Path, transport: str
) -> None:
    command = [str(replay), "--dump", str(xvector_reference), "--synthetic"]  # the tiny checkpoint is random
    if transport == "stdio":
        results = check_target(shlex.join(command))
    else:
        server = subprocess.Popen(
            [*command, "--websocket", "--dump-dir", str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert server.stdout is not None
            url = server.stdout.readline().split()[-1]  # "listening on ws://127.0.0.1:PORT/api/v1/speak"
            results = check_target(url)
        finally:
            server.terminate()
            server.wait()
    assert [r.rule for r in results if r.failed] == [], [r.detail for r in results if r.failed]


def test_replay_hashes_its_checkpoint_with_the_kits_helper(
    replay: Path, xvector_reference: Path, tmp_path: Path
) -> None:
    """`--checkpoint` makes the replay compute `weights_hash` as a port does (the kit's helper): the suite's
    hash of the same directory, and a refusal to start on weights the dump did not come from."""
    from qtts_eval import checkpoints

    tiny = checkpoints.resolve("tiny")
    channel = WorkerChannel([str(replay), "--dump", str(xvector_reference), "--checkpoint", str(tiny.path)])
    try:
        implementation = RemoteSession(channel, TIMEOUTS).hello.implementation
        assert implementation["weights_hash"] == checkpoints.weights_hash(tiny.path) == tiny.weights_hash
    finally:
        channel.close()
    other = tmp_path / "other"
    (other / "speech_tokenizer").mkdir(parents=True)
    (other / "model.safetensors").write_bytes(b"talker")
    (other / "speech_tokenizer" / "model.safetensors").write_bytes(b"codec")
    refused = subprocess.run(
        [str(replay), "--dump", str(xvector_reference), "--checkpoint", str(other)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0
    assert f"weights hash {checkpoints.weights_hash(other)}, but the dump came from" in refused.stderr


def parity_speak(request: Request, name: str, forced: dict[str, np.ndarray] | None) -> dict[str, Any]:
    """A parity request as docs/protocol.md defines it: dump_path, and the forced_* fields when forced
    (`forced` holds the reference dump's `codes`, `codec_enc.codes` and `spk.embedding`)."""
    message = {**protocol.speak_message(request, True), "dump_path": name}
    if forced is not None:
        spk = np.ascontiguousarray(forced["spk.embedding"], dtype="<f4").tobytes()
        message["forced_codes"] = forced["codes"].tolist()
        message["forced_ref_codes"] = forced["codec_enc.codes"].tolist()
        message["forced_spk_embedding"] = base64.b64encode(spk).decode("ascii")
    return message


def forced_inputs(dump: StageDump) -> dict[str, np.ndarray]:
    """What a teacher-forced candidate receives from the reference dump (docs/parity.md)."""
    return {key: np.asarray(dump.tensors[key]) for key in ("codes", "codec_enc.codes", "spk.embedding")}


@pytest.mark.parametrize("perturb", [None, "talker.logits", "codec_enc.codes"])
def test_stage_dumps_over_the_wire_pass_or_fail_at_the_perturbed_stage(
    replay: Path, reference: tuple[StageDump, Path], request_: Request, tmp_path: Path, perturb: str | None
) -> None:
    ref_dump, ref_path = reference
    argv = [str(replay), "--dump", str(ref_path), "--frame-delay-ms", "0", "--dump-dir", str(tmp_path)]
    channel = WorkerChannel(argv + (["--perturb", perturb] if perturb else []))
    try:
        session = RemoteSession(channel, TIMEOUTS)
        assert {"stage_dumps", "forced_codes"} <= session.hello.capabilities
        session.start(request_.ref_audio, request_.ref_text, Encoding.F32)
        utterance = collect(session.speak(request_))
        audio = np.concatenate([chunk.samples for chunk in utterance.chunks])
        assert np.array_equal(audio, ref_dump.tensors["output.wav"])  # f32 is exact
        assert np.array_equal(utterance.end.codes, ref_dump.tensors["codes"])
        for forced in (None, forced_inputs(ref_dump)):
            name = f"run/candidate.{'forced' if forced else 'free'}.safetensors"
            channel.send(parity_speak(request_, name, forced))
            reply = session.next_message()
            assert reply == {"type": "dumped", "path": name, "bytes": (tmp_path / name).stat().st_size}
            dump = read_dump(tmp_path / name)
            assert dump.meta.forced == (tuple(ForcedInput) if forced is not None else ())
            profile = profile_for_precision(dump.meta.dtype, dump.meta.codec_dtype)
            failure = compare_dumps(ref_dump, dump, profile).first_failure
            assert (failure.key if failure else None) == perturb
    finally:
        channel.close()


def test_replay_refuses_to_force_what_it_cannot_compute(
    replay: Path, reference: tuple[StageDump, Path], request_: Request, tmp_path: Path
) -> None:
    channel = WorkerChannel([str(replay), "--dump", str(reference[1]), "--dump-dir", str(tmp_path)])
    try:
        session = RemoteSession(channel, TIMEOUTS)
        session.start(request_.ref_audio, request_.ref_text, Encoding.F32)
        other = {**forced_inputs(reference[0]), "codes": reference[0].tensors["codes"] + 1}
        channel.send(parity_speak(request_, "other.safetensors", other))
        reply = session.next_message()
        assert (reply["type"], reply["code"]) == ("error", "UNSUPPORTED")
        assert not (tmp_path / "other.safetensors").exists()
    finally:
        channel.close()


@pytest.mark.slow
def test_parity_cli_over_the_wire(
    replay: Path, reference: tuple[StageDump, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for perturb in (None, "talker.logits", "codec_enc.codes"):
        # Not ending in ".safetensors": the parity CLI takes such a candidate for a dump file.
        command = f"{replay} --dump {reference[1]} --frame-delay-ms 0" + (
            f" --perturb {perturb}" if perturb else ""
        )
        out = tmp_path / (perturb or "clean")
        code = main(["parity", command, "--frames", str(FRAMES), "--voice", VOICE, "--out", str(out)])
        captured = capsys.readouterr()
        verdict = captured.out
        assert code == (0 if perturb is None else 1), verdict + captured.err
        if perturb is not None:
            assert f"FAIL at {perturb}" in verdict


def test_replay_refuses_a_layout_or_mode_it_does_not_build(replay: Path, xvector_reference: Path) -> None:
    from qtts_eval import pipelines
    from qtts_eval.pipelines.base import UnsupportedRequest
    from qtts_eval.wire.conformance import CheckOptions, Verdict

    command = shlex.join([str(replay), "--dump", str(xvector_reference), "--synthetic"])
    results = {r.rule: r for r in check_target(command, CheckOptions(mode=CloneMode.ICL))}
    assert results["audio-f32"].verdict is Verdict.NOT_APPLICABLE
    assert results["audio-f32"].detail.startswith("(unsupported:")
    assert not any(r.failed for r in results.values()), results
    worker = pipelines.create("worker", PipelineConfig(options={"command": command}))
    worker.load()
    try:
        assert worker.describe()["layouts"] == {"xvector": False}
        other_layout = dataclasses.replace(make_request(CloneMode.XVECTOR), non_streaming_mode=True)
        with pytest.raises(UnsupportedRequest, match="builds only"):  # the bench records `unsupported`
            collect(worker.stream(other_layout))
    finally:
        worker.close()
