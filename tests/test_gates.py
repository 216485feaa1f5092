"""Regression gates fail when they should: per group, on paired requests, counting errors, refusing what
cannot be compared; and pass what is noise."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from qtts_eval import environment
from qtts_eval.bench import Bench, BenchConfig
from qtts_eval.cli import main
from qtts_eval.errors import GateError
from qtts_eval.gates import (
    Better,
    ErrorGate,
    GateInputs,
    GateSpec,
    GoodputGate,
    MetricGate,
    Outcome,
    ParityGate,
    evaluate,
    evaluate_gate,
    load_gates,
    load_inputs,
    parse_gates,
)

# Calibration pipeline delays, long against the tens of ms a busy 2-core machine adds to a request.
FIRST_CHUNK_MS = 500.0  # hand-off -> first chunk
GAP_MS = 20.0  # between chunks
SLOWDOWN = 1.3  # the planted regression: every delay 30 % longer
REPEATS = 5  # per group: the fewest pairs the paired tests can find significant (p = 1/32 one-sided)
FAULTY = [sys.executable, "-m", "qtts_eval.wire.faulty_worker"]

GATES_TOML = """
[settings]
# The calibration pipeline records its injected delays; the planted slowdown changes them on purpose.
may_differ = ["env_first_chunk_ms", "env_gap_ms"]

[[gate]]
metric = "first_byte_s"
statistic = "median"
max_regression = 0.10

[[gate]]
metric = "rtf"
statistic = "median"
max_regression = 0.10

[[gate]]
metric = "first_byte_s"
statistic = "p95"
at_most = 0.575

[[gate]]
max_error_rate = 0.0
"""


def _calibration_config(factor: float = 1.0, repeats: int = REPEATS) -> BenchConfig:
    return BenchConfig(
        pipelines=("calibration",),
        fixtures=("en_short", "zh_short"),
        modes=("xvector",),
        repeats=repeats,
        speaker_embedder=None,
        options={"first_chunk_ms": FIRST_CHUNK_MS * factor, "gap_ms": GAP_MS * factor, "chunks": 3},
    )


def _calibration_run(root: Path, run_id: str, factor: float) -> Path:
    """A real bench run of the calibration pipeline with its injected delays scaled by ``factor``."""
    Bench.create(_calibration_config(factor), root, run_id).run(progress=False)
    return root / run_id


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gate-runs")
    return {
        "baseline": _calibration_run(root, "baseline", 1.0),
        "rerun": _calibration_run(root, "rerun", 1.0),
        "slow": _calibration_run(root, "slow", SLOWDOWN),
    }


@pytest.fixture(scope="module")
def gates_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gates") / "gates.toml"
    path.write_text(GATES_TOML)
    return path


def test_planted_slowdown_fails_every_group_naming_metric_baseline_and_change(
    runs: dict[str, Path], gates_file: Path
) -> None:
    results = evaluate(load_gates(gates_file), load_inputs(runs["slow"], [runs["baseline"]]))
    by_gate = {r.gate: r for r in results}
    first_byte = by_gate["first_byte_s.median <= +10% vs baseline"]
    assert first_byte.outcome is Outcome.FAIL, first_byte.report()
    assert [g.group for g in first_byte.groups] == [
        "calibration fixture_id=en_short mode=xvector",
        "calibration fixture_id=zh_short mode=xvector",
    ]
    assert "run slow vs baseline baseline: 2 fail" in first_byte.message
    for group in first_byte.groups:
        assert group.outcome is Outcome.FAIL and group.n == REPEATS
        assert group.change == pytest.approx(SLOWDOWN - 1, abs=0.05)
        assert group.p_value == pytest.approx(1 / 32)  # all 5 pairs slower: the exact signed-rank p
        for words in ("first_byte_s median", "baseline 0.5", f"change {group.change:+.1%}", "REGRESSION"):
            assert words in group.message, (words, group.message)
    assert by_gate["rtf.median <= +10% vs baseline"].outcome is Outcome.FAIL
    assert by_gate["first_byte_s.p95 <= 0.575"].outcome is Outcome.FAIL  # 650 ms against 575 ms
    assert by_gate["error_rate <= 0"].outcome is Outcome.PASS


def test_noise_only_rerun_passes(runs: dict[str, Path], gates_file: Path) -> None:
    results = evaluate(load_gates(gates_file), load_inputs(runs["rerun"], [runs["baseline"]]))
    assert [r.outcome for r in results] == [Outcome.PASS] * 4, [r.report() for r in results]
    changes = [g.change for r in results for g in r.groups if g.change is not None]
    assert len(changes) == 4 and all(abs(change) < 0.10 for change in changes)


def test_cli_exit_codes(runs: dict[str, Path], gates_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["gate", "--gates", str(gates_file), "--baseline", str(runs["baseline"])]
    assert main([*args, str(runs["slow"])]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "calibration fixture_id=zh_short mode=xvector" in out
    assert main([*args, str(runs["rerun"])]) == 0
    assert main(["gate", "--gates", str(gates_file), str(runs["rerun"])]) == 3  # no baseline: refused
    assert "no baseline run given" in capsys.readouterr().out
    assert main(["gate", "--gates", str(gates_file) + ".missing", str(runs["rerun"])]) == 2
    assert "cannot read gates file" in capsys.readouterr().err


@pytest.mark.slow
def test_pytest_plugin_makes_one_item_per_gate(runs: dict[str, Path], gates_file: Path) -> None:
    def pytest_gates(current: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                *(sys.executable, "-m", "pytest", str(gates_file), "-p", "no:cacheprovider", "-q", "-rA"),
                *("--qtts-current", str(current), "--qtts-baseline", str(runs["baseline"])),
            ],
            capture_output=True,
            text=True,
            cwd=gates_file.parent,
            timeout=300,
        )

    slow = pytest_gates(runs["slow"])
    assert slow.returncode == 1, slow.stdout + slow.stderr
    assert "3 failed, 1 passed" in slow.stdout, slow.stdout
    assert "first_byte_s median baseline" in slow.stdout and "REGRESSION" in slow.stdout
    rerun = pytest_gates(runs["rerun"])
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "4 passed" in rerun.stdout


# --- the real tiny reference: a one-fixture slowdown fails its group only -----------------------------------


@pytest.mark.slow
def test_one_fixture_slowdown_on_the_real_reference_fails_only_its_group(tmp_path: Path) -> None:
    """30 % slower talker steps on en_one_word only. The slowed and the unchanged reference run interleaved
    in one bench run (A, B per cell), so machine load drifts onto both alike; each becomes one side."""
    import torch

    from qtts_eval import pipelines
    from qtts_eval.fixtures import load_fixtures

    sys.path.insert(0, str(Path(__file__).parent))
    from gate_rates import SlowedReference

    pipelines.register("reference-a", SlowedReference)
    pipelines.register("reference-b", SlowedReference)
    config = BenchConfig(
        pipelines=("reference-a", "reference-b"),
        fixtures=("en_one_word", "en_short"),
        modes=("xvector",),
        repeats=8,  # a pair against the trend still leaves p < 0.05 (7 of 8: p = 2/256)
        speaker_embedder=None,
        options={
            "reference-b.slowdown": 0.3,
            "reference-b.slow_text": load_fixtures().text("en_one_word").text,
        },
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core machine, one thread per process avoids OpenMP thrashing
    try:
        frame = Bench.create(config, tmp_path, "slowed").run(progress=False)
    finally:
        torch.set_num_threads(threads)
    baseline = frame[frame["pipeline"] == "reference-a"].assign(pipeline="reference", run_id="unchanged")
    current = frame[frame["pipeline"] == "reference-b"].assign(pipeline="reference", run_id="slowed")
    gate = MetricGate(metric="rtf", max_regression=0.10)
    result = evaluate_gate(gate, GateSpec((gate,)), GateInputs(current, (baseline,)))
    outcomes = {g.group: g.outcome for g in result.groups}
    assert outcomes == {
        "reference fixture_id=en_one_word mode=xvector": Outcome.FAIL,
        "reference fixture_id=en_short mode=xvector": Outcome.PASS,
    }, result.report()


# --- constructed runs -----------------------------------------------------------------------------------


def _frame(
    values: list[float] | np.ndarray,
    metric: str = "rtf",
    run_id: str = "r",
    fixtures: tuple[str, ...] = ("t",),
    **columns: object,
) -> pd.DataFrame:
    """One pipeline's records: ``values`` spread over ``fixtures`` in turn, one repeat per value."""
    env = {
        "env_cpu": "cpu-a",
        "env_dtype": "float32",
        "env_fixtures_hash": "f1",
        "env_synthetic": False,
        "env_git_commit": "c1",
    }
    count = len(values)
    return pd.DataFrame(
        {
            "run_id": run_id,
            "pipeline": "p",
            "status": "ok",
            "fixture_id": [fixtures[i % len(fixtures)] for i in range(count)],
            "voice_id": "v",
            "mode": "icl",
            "repeat": [i // len(fixtures) for i in range(count)],
            "frame_budget": 36,
            "sampling": "greedy",
            metric: values,
            **{**env, **columns},
        }
    )


RTF_GATE = MetricGate(metric="rtf", max_regression=0.10)


def _one(
    gate: MetricGate | ErrorGate | GoodputGate, current: pd.DataFrame, *baselines: pd.DataFrame, **spec: Any
) -> Any:
    return evaluate_gate(gate, GateSpec((gate,), **spec), GateInputs(current, tuple(baselines)))


def test_large_but_insignificant_change_is_noise() -> None:
    baseline = _frame([1.0, 0.5, 2.0, 1.0, 3.0, 0.4])
    current = _frame([1.6, 0.45, 2.2, 1.3, 2.8, 0.38])  # median +25 %, but the pairs go both ways
    result = _one(RTF_GATE, current, baseline)
    assert result.outcome is Outcome.PASS and "treated as noise" in result.groups[0].message


def test_significant_but_small_change_passes() -> None:
    baseline = _frame([1.00, 1.001, 1.002, 1.003, 1.004])
    current = _frame([1.05, 1.051, 1.052, 1.053, 1.054])  # every pair slower, but only +5 %
    result = _one(RTF_GATE, current, baseline)
    assert result.outcome is Outcome.PASS and "within threshold" in result.groups[0].message


def test_tail_only_regression_fails_a_p95_gate_and_not_the_median() -> None:
    """6 of 40 requests 60 % slower: the bulk is unchanged, the tail is not."""
    rng = np.random.default_rng(1)
    baseline = 1.0 + 0.02 * rng.standard_normal(40)
    current = 1.0 + 0.02 * rng.standard_normal(40)
    current[rng.choice(40, size=6, replace=False)] *= 1.6
    tail = _one(
        MetricGate(metric="rtf", statistic="p95", max_regression=0.10), _frame(current), _frame(baseline)
    )
    assert tail.outcome is Outcome.FAIL, tail.report()
    assert "bootstrap p=" in tail.groups[0].message
    assert _one(RTF_GATE, _frame(current), _frame(baseline)).outcome is Outcome.PASS


def test_groups_are_paired_on_request_keys() -> None:
    """Two fixtures of very different speeds: grouped and paired, a 20 % slowdown of one is clear."""
    values = np.array([1.0, 5.0] * 5) * (1 + 0.01 * np.arange(10))
    slowed = values.copy()
    slowed[0::2] *= 1.2  # fixture "a" only
    result = _one(RTF_GATE, _frame(slowed, fixtures=("a", "b")), _frame(values, fixtures=("a", "b")))
    assert {g.group: g.outcome for g in result.groups} == {
        "p fixture_id=a mode=icl": Outcome.FAIL,
        "p fixture_id=b mode=icl": Outcome.PASS,
    }
    assert "1 pass, 1 fail; fail: p fixture_id=a mode=icl" in result.message
    by_category = _one(
        RTF_GATE, _frame(slowed, fixtures=("a", "b")), _frame(values, fixtures=("a", "b")), group_by=("mode",)
    )
    assert [g.group for g in by_category.groups] == ["p mode=icl"]


def test_error_rate_gate_counts_failed_requests_per_group() -> None:
    frame = _frame([1.0] * 4, fixtures=("en", "zh"))
    frame.loc[frame["fixture_id"] == "zh", ["status", "error"]] = ["error", "RemoteError: SYNTHESIS_ERROR"]
    result = _one(ErrorGate(), frame)
    assert {g.group: g.outcome for g in result.groups} == {
        "p fixture_id=en mode=icl": Outcome.PASS,
        "p fixture_id=zh mode=icl": Outcome.FAIL,
    }
    assert "2 of 2 requests not ok (100%" in result.groups[1].message and "SYNTHESIS_ERROR" in result.report()
    assert _one(ErrorGate(max_error_rate=0.5), frame.iloc[:3]).outcome is Outcome.FAIL  # 1 of 1 zh failed


def test_goodput_gate_holds_a_load_run_to_its_slo() -> None:
    # A load level of 5 requests, one over the SLO and one failed (no verdict: not met): goodput 60 %.
    frame = _frame([1.0] * 5, info_slo="first_byte<=0.2,goodput>=0.9")
    frame["info_meets_slo"] = [True, True, True, False, None]
    spec = parse_gates({"gate": [{"min_goodput": 0.6}, {"min_goodput": 0.8, "name": "held to 80 %"}]})
    passed, failed = (evaluate_gate(gate, spec, GateInputs(frame)) for gate in spec.gates)
    assert passed.outcome is Outcome.PASS and failed.outcome is Outcome.FAIL, failed.report()
    assert "3 of 5 requests met the SLO first_byte<=0.2,goodput>=0.9 (goodput 60%, required 80%)" in (
        failed.report()
    )
    no_slo = _one(GoodputGate(), _frame([1.0] * 5))  # a bench run, or load without --slo
    assert no_slo.outcome is Outcome.REFUSED and "qtts-eval load --slo" in no_slo.report()
    with pytest.raises(GateError, match=r"min_goodput is a share in \(0, 1\]"):
        parse_gates({"gate": [{"min_goodput": 1.5}]})


def test_bench_with_failed_requests_exits_non_zero_and_fails_the_error_gate(tmp_path: Path) -> None:
    command = json.dumps([*FAULTY, "--fault", "crash", "--after", "1"])
    code = main(
        [
            *("bench", "--pipeline", "worker", "--fixture", "en_one_word", "--mode", "xvector"),
            *("--repeats", "2", "--warmup", "0", "--speaker-embedder", "none", "--no-progress"),
            *("--option", f"command={command}", "--option", "timeout_s=5"),
            *("--results", str(tmp_path), "--run-id", "crash"),
        ]
    )
    assert code == 1
    result = evaluate_gate(ErrorGate(), GateSpec((ErrorGate(),)), load_inputs(tmp_path / "crash"))
    assert result.outcome is Outcome.FAIL and "1 of 2 requests not ok" in result.report()


def test_resumed_run_on_another_machine_is_refused(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = Bench.create(_calibration_config(), tmp_path, "resumed")
    bench.run(progress=False)
    records = bench.store.records_path
    lines = records.read_text().splitlines(keepends=True)
    records.write_text("".join(lines[:4]))  # killed after 4 requests
    real = environment.fingerprint
    monkeypatch.setattr(
        environment, "fingerprint", lambda: {**real(), "cpu": "Another CPU", "git_commit": "c2"}
    )
    Bench.resume(tmp_path / "resumed").run(progress=False)
    frame = bench.frame()
    assert frame["env_cpu"].nunique() == 2  # every record says where it was measured
    result = evaluate_gate(
        RTF_GATE, GateSpec((RTF_GATE,)), load_inputs(tmp_path / "resumed", [runs["baseline"]])
    )
    assert result.outcome is Outcome.REFUSED
    assert "mixes segments with different env_cpu" in result.report()


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"env_cpu": "cpu-b"}, "different cpu"),
        ({"env_gpu_name": "NVIDIA H100"}, "different gpu_name"),
        ({"env_dtype": "bfloat16"}, "different dtype"),
        ({"env_fixtures_hash": "f2"}, "different fixtures_hash"),
        ({"env_weights_hash": "w2"}, "different weights_hash"),
        ({"env_attn_implementation": "eager"}, "different attn_implementation"),
        ({"env_packet_frames": 8}, "different packet_frames"),
        ({"env_left_context": "25"}, "different left_context"),
        ({"env_codec_dtype": "bfloat16"}, "different codec_dtype"),
        ({"env_sampling_repetition_penalty": 1.0}, "different sampling_repetition_penalty"),
        ({"env_torch": "2.11.0"}, "different torch"),
        ({"env_implementation_name": "ggml-port"}, "different implementation_name"),
        ({"sampling": "sample"}, "different sampling"),
        ({"speaker_embedder": "ecapa"}, "different speaker_embedder"),
        ({"voice_id": "awb"}, "different requests"),
        ({"frame_budget": 40}, "different requests"),
    ],
)
def test_incomparable_runs_are_refused(change: dict[str, object], named: str) -> None:
    result = _one(RTF_GATE, _frame([2.0] * 5, **change), _frame([1.0] * 5))
    assert result.outcome is Outcome.REFUSED and named in result.report()


def test_the_code_under_test_may_change_and_may_differ_allows_more() -> None:
    baseline = _frame([1.0] * 5, env_implementation_version="0.3.0", env_torch="2.9.1")
    current = _frame([2.0] * 5, env_git_commit="c2", env_implementation_version="0.4.0", env_torch="2.9.1")
    assert _one(RTF_GATE, current, baseline).outcome is Outcome.FAIL  # compared: a regression
    newer_torch = current.assign(env_torch="2.11.0")
    assert _one(RTF_GATE, newer_torch, baseline).outcome is Outcome.REFUSED
    allowed = _one(RTF_GATE, newer_torch, baseline, may_differ=frozenset({"env_torch"}))
    assert allowed.outcome is Outcome.FAIL


def test_too_few_pairs_are_refused() -> None:
    result = _one(RTF_GATE, _frame([2.0] * 4), _frame([1.0] * 4))
    assert result.outcome is Outcome.REFUSED and "too few paired requests" in result.report()


def test_quality_metric_on_synthetic_weights_is_never_gated() -> None:
    gate = MetricGate(metric="speaker_sim", better=Better.HIGHER, max_regression=0.05)
    baseline = _frame([0.9] * 6, "speaker_sim")
    dropped = _frame([0.5] * 6, "speaker_sim")
    assert _one(gate, dropped, baseline).outcome is Outcome.FAIL  # real weights: a planted drop is caught
    result = _one(gate, _frame([0.5] * 6, "speaker_sim", env_synthetic=True), baseline)
    assert result.outcome is Outcome.NOT_GATED and "synthetic" in result.message
    # Inferred from the quality module's own column names, without quality = true.
    flagged = _frame([0.1] * 6, "audible_fraction", quality_verdict_valid=False)
    assert _one(MetricGate(metric="audible_fraction", at_least=0.5), flagged).outcome is Outcome.NOT_GATED


def test_calibration_widens_threshold_to_baseline_spread() -> None:
    spread_runs = [_frame(list(np.full(5, centre)), run_id=f"b{centre}") for centre in (0.9, 1.0, 1.1)]
    current = _frame([1.3] * 5)  # +30 % against the pooled median, spread between baselines is 20 %
    assert _one(RTF_GATE, current, spread_runs[1]).outcome is Outcome.FAIL
    result = _one(RTF_GATE, current, *spread_runs)
    assert result.outcome is Outcome.PASS
    assert result.groups[0].threshold == pytest.approx(0.40)
    assert "calibrated from 3 baseline runs" in result.report()


def test_parity_gate_reads_the_verdict(tmp_path: Path) -> None:
    gate = ParityGate()
    spec = GateSpec((gate,))
    for verdict, outcome in (("pass", Outcome.PASS), ("fail", Outcome.FAIL)):
        report = tmp_path / f"{verdict}.json"
        report.write_text(json.dumps({"verdict": verdict}))
        result = evaluate_gate(gate, spec, GateInputs(_frame([1.0]), parity_report=report))
        assert result.outcome is outcome and verdict in result.message
    missing = evaluate_gate(gate, spec, GateInputs(_frame([1.0]), parity_report=tmp_path / "none.json"))
    assert missing.outcome is Outcome.REFUSED


@pytest.mark.parametrize(
    ("document", "named"),
    [
        ({"gate": [{"metric": "rtf", "max_regression": 0.1, "treshold": 1}]}, "unknown key(s) ['treshold']"),
        ({"gate": [{"metric": "rtf", "at_most": 1.0, "max_regression": 0.1}]}, "exactly one of"),
        ({"gate": [{"metric": "rtf", "statistic": "p150", "at_most": 1.0}]}, "unknown statistic 'p150'"),
        ({"gate": [{"metric": "rtf", "better": "faster", "at_most": 1.0}]}, "better must be"),
        ({"gate": [{"metric": "rtf", "at_most": 1.0, "group_by": "mode"}]}, "group_by must be a list"),
        ({"gate": [{"max_error_rate": 1.5}]}, "max_error_rate is a share"),
        ({"gate": [{"parity": "maybe"}]}, "parity must be"),
        ({"gate": [{"metric": "rtf", "at_most": 1.0}, {"metric": "rtf", "at_most": 1.0}]}, "duplicate gate"),
        ({"settings": {"alpha": 2}, "gate": [{"metric": "rtf", "at_most": 1.0}]}, "alpha must be"),
        ({"settings": {"may_differ": ["torch"]}, "gate": [{"max_error_rate": 0}]}, "environment columns"),
        ({}, "no gates"),
    ],
)
def test_bad_gates_files_name_the_problem(document: dict[str, object], named: str) -> None:
    with pytest.raises(GateError, match=re.escape(named)):
        parse_gates(document)


def test_committed_example_gates_file_parses() -> None:
    spec = load_gates(Path(__file__).resolve().parent.parent / "results" / "baselines" / "gates.toml")
    assert any(isinstance(gate, ErrorGate) for gate in spec.gates)
    assert any(
        isinstance(gate, MetricGate) and gate.statistic == "p95" and gate.max_regression
        for gate in spec.gates
    )


# --- the documented recipes are one segment; a machine or commit change mid-run is not ----------------------


def _two_pipelines(**candidate: object) -> pd.DataFrame:
    """The reference and a port in one run, as the error gate sees them: each with its own dtype name."""
    reference = _frame([1.0] * 4, fixtures=("a", "b")).assign(pipeline="reference")
    port = _frame([2.0] * 4, fixtures=("a", "b")).assign(pipeline="qwentts-cpp", env_dtype="F32")
    return pd.concat([reference, port.assign(**candidate)], ignore_index=True)


def test_error_gate_accepts_reference_and_port_with_their_own_dtype_names() -> None:
    result = _one(ErrorGate(), _two_pipelines())
    assert result.outcome is Outcome.PASS, result.report()
    assert {g.group.split()[0] for g in result.groups} == {"reference", "qwentts-cpp"}


def test_gates_accept_the_per_mode_prompt_layout_of_non_streaming_mode_xvector() -> None:
    """--non-streaming-mode xvector: x-vector requests ask the whole-text layout, ICL ones the default."""

    def run(values: list[float], **columns: object) -> pd.DataFrame:
        frame = _frame(values * 2, **columns)
        frame["mode"] = ["xvector"] * len(values) + ["icl"] * len(values)
        frame["repeat"] = list(range(len(values))) * 2
        frame["env_non_streaming_mode"] = frame["mode"] == "xvector"
        return frame

    baseline, current = run([1.0] * 5), run([2.0] * 5, env_git_commit="c2")
    assert _one(ErrorGate(), current).outcome is Outcome.PASS
    result = _one(RTF_GATE, current, baseline)
    assert result.outcome is Outcome.FAIL and len(result.groups) == 2, result.report()  # compared, per mode
    other_layout = current.assign(env_non_streaming_mode=False)  # the same cells in another layout
    refused = _one(RTF_GATE, other_layout, baseline)
    assert refused.outcome is Outcome.REFUSED and "different requests" in refused.report()


def test_gates_accept_a_two_node_ray_run() -> None:
    """Two loopback Ray nodes on one machine: node id and load average differ per record, nothing else."""
    nodes = {"env_ray_node_id": ["node-a", "node-b"] * 3, "env_loadavg_1m": [0.5, 1.5] * 3}
    current = _frame([2.0] * 6, env_git_commit="c2", **nodes)
    assert _one(ErrorGate(), current).outcome is Outcome.PASS
    assert _one(RTF_GATE, current, _frame([1.0] * 6, **nodes)).outcome is Outcome.FAIL  # compared


@pytest.mark.parametrize(
    ("planted", "named"),
    [
        ({"env_cpu": "cpu-b"}, "env_cpu"),
        ({"env_gpu_name": "NVIDIA A100"}, "env_gpu_name"),
        ({"env_git_commit": "c2"}, "env_git_commit"),
        ({"env_torch": "2.11.0"}, "env_torch"),
    ],
)
def test_a_machine_or_commit_change_mid_run_is_refused(planted: dict[str, object], named: str) -> None:
    current = _two_pipelines(env_gpu_name="NVIDIA H100", env_torch="2.9.1")
    later = current.index[current["pipeline"] == "qwentts-cpp"][2:]  # the port's last two requests
    for column, value in planted.items():
        current.loc[later, column] = value
    result = _one(ErrorGate(), current)
    assert result.outcome is Outcome.REFUSED, result.report()
    assert f"(qwentts-cpp) mixes segments with different {named}" in result.report()
    port = current[current["pipeline"] == "qwentts-cpp"]
    baseline = _two_pipelines(env_gpu_name="NVIDIA H100", env_torch="2.9.1")
    baseline = baseline[baseline["pipeline"] == "qwentts-cpp"]
    assert _one(RTF_GATE, port, baseline).outcome is Outcome.REFUSED
