"""Regression gates: a planted 30 % slowdown fails with metric, baseline and change named; noise passes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qtts_eval.bench import Bench, BenchConfig
from qtts_eval.cli import main
from qtts_eval.errors import GateError
from qtts_eval.gates import (
    Better,
    GateInputs,
    GateSpec,
    MetricGate,
    Outcome,
    ParityGate,
    evaluate,
    evaluate_gate,
    load_gates,
    load_inputs,
    parse_gates,
)

FIRST_CHUNK_MS = 40.0  # calibration pipeline: hand-off -> first chunk
GAP_MS = 10.0  # between chunks
SLOWDOWN = 1.3  # the planted regression: every delay 30 % longer

GATES_TOML = """
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
at_most = 0.050
"""


def _calibration_run(root: Path, run_id: str, factor: float) -> Path:
    """A real bench run of the calibration pipeline with its injected delays scaled by ``factor``."""
    config = BenchConfig(
        pipelines=("calibration",),
        fixtures=("en_short", "zh_short"),
        modes=("icl", "xvector"),
        repeats=2,  # 8 requests: enough for Mann-Whitney (4 a side at least)
        options={"first_chunk_ms": FIRST_CHUNK_MS * factor, "gap_ms": GAP_MS * factor, "chunks": 3},
    )
    Bench.create(config, root, run_id).run(progress=False)
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


def test_planted_slowdown_fails_naming_metric_baseline_and_change(
    runs: dict[str, Path], gates_file: Path
) -> None:
    results = evaluate(load_gates(gates_file), load_inputs(runs["slow"], [runs["baseline"]]))
    by_gate = {r.gate: r for r in results}
    first_byte = by_gate["first_byte_s.median <= +10% vs baseline"]
    assert first_byte.outcome is Outcome.FAIL, first_byte.message
    assert first_byte.change == pytest.approx(SLOWDOWN - 1, abs=0.05)
    assert first_byte.p_value is not None and first_byte.p_value < 0.01
    for words in (
        "first_byte_s median",
        "baseline 0.04",
        "run baseline",
        "run slow",
        f"change {first_byte.change:+.1%}",
        "REGRESSION",
    ):
        assert words in first_byte.message, (words, first_byte.message)
    assert by_gate["rtf.median <= +10% vs baseline"].outcome is Outcome.FAIL
    assert by_gate["first_byte_s.p95 <= 0.05"].outcome is Outcome.FAIL  # 52 ms against a 50 ms ceiling


def test_noise_only_rerun_passes(runs: dict[str, Path], gates_file: Path) -> None:
    results = evaluate(load_gates(gates_file), load_inputs(runs["rerun"], [runs["baseline"]]))
    assert [r.outcome for r in results] == [Outcome.PASS] * 3, [r.message for r in results]
    assert all(abs(r.change) < 0.10 for r in results if r.change is not None)


def test_cli_exit_codes(runs: dict[str, Path], gates_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["gate", "--gates", str(gates_file), "--baseline", str(runs["baseline"])]
    assert main([*args, str(runs["slow"])]) == 1
    assert "FAIL" in capsys.readouterr().out
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
    assert "3 failed" in slow.stdout, slow.stdout
    assert "first_byte_s median baseline" in slow.stdout and "REGRESSION" in slow.stdout
    rerun = pytest_gates(runs["rerun"])
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "3 passed" in rerun.stdout


def _frame(values: list[float], metric: str = "rtf", run_id: str = "r", **env: object) -> pd.DataFrame:
    base_env = {"env_cpu": "cpu-a", "env_dtype": "float32", "env_fixtures_hash": "f1", "env_synthetic": False}
    return pd.DataFrame(
        {"run_id": run_id, "pipeline": "p", "status": "ok", metric: values, **{**base_env, **env}}
    )


RTF_GATE = MetricGate(metric="rtf", max_regression=0.10)


def _one(gate: MetricGate, current: pd.DataFrame, *baselines: pd.DataFrame) -> tuple[Outcome, str]:
    result = evaluate_gate(gate, GateSpec((gate,)), GateInputs(current, tuple(baselines)))
    return result.outcome, result.message


def test_large_but_insignificant_change_is_noise() -> None:
    baseline = _frame([1.0, 0.5, 2.0, 1.0, 3.0, 0.4])
    current = _frame([1.6, 0.5, 2.0, 1.5, 3.0, 0.4])  # median +25 %, but the samples overlap throughout
    outcome, message = _one(RTF_GATE, current, baseline)
    assert outcome is Outcome.PASS and "treated as noise" in message


def test_significant_but_small_change_passes() -> None:
    baseline = _frame([1.00, 1.001, 1.002, 1.003, 1.004])
    current = _frame([1.05, 1.051, 1.052, 1.053, 1.054])  # fully separated, but only +5 %
    outcome, message = _one(RTF_GATE, current, baseline)
    assert outcome is Outcome.PASS and "within threshold" in message


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"env_cpu": "cpu-b"}, "different CPU"),
        ({"env_gpu_name": "NVIDIA H100"}, "different GPU"),
        ({"env_dtype": "bfloat16"}, "different dtype"),
        ({"env_fixtures_hash": "f2"}, "different fixture set"),
        ({"env_weights_hash": "w2"}, "different weights"),
    ],
)
def test_incomparable_runs_are_refused(env: dict[str, object], named: str) -> None:
    baseline = _frame([1.0] * 5)
    outcome, message = _one(RTF_GATE, _frame([2.0] * 5, **env), baseline)
    assert outcome is Outcome.REFUSED and named in message


def test_too_few_requests_are_refused() -> None:
    outcome, message = _one(RTF_GATE, _frame([2.0] * 3), _frame([1.0] * 3))
    assert outcome is Outcome.REFUSED and "too few requests" in message


def test_quality_metric_on_synthetic_weights_is_never_gated() -> None:
    gate = MetricGate(metric="speaker_sim", better=Better.HIGHER, max_regression=0.05)
    baseline = _frame([0.9] * 6, "speaker_sim")
    dropped = _frame([0.5] * 6, "speaker_sim")
    assert _one(gate, dropped, baseline)[0] is Outcome.FAIL  # real weights: a planted drop is caught
    outcome, message = _one(gate, _frame([0.5] * 6, "speaker_sim", env_synthetic=True), baseline)
    assert outcome is Outcome.NOT_GATED and "synthetic" in message
    # Inferred from the quality module's own column names, without quality = true.
    flagged = _frame([0.1] * 6, "audible_fraction", quality_verdict_valid=False)
    assert _one(MetricGate(metric="audible_fraction", at_least=0.5), flagged)[0] is Outcome.NOT_GATED


def test_calibration_widens_threshold_to_baseline_spread() -> None:
    spread_runs = [_frame(list(np.full(5, centre)), run_id=f"b{centre}") for centre in (0.9, 1.0, 1.1)]
    current = _frame([1.3] * 5)  # +30 % against the pooled median, spread between baselines is 20 %
    assert _one(RTF_GATE, current, spread_runs[1])[0] is Outcome.FAIL
    result = evaluate_gate(RTF_GATE, GateSpec((RTF_GATE,)), GateInputs(current, tuple(spread_runs)))
    assert result.outcome is Outcome.PASS
    assert result.threshold == pytest.approx(0.40)
    assert "calibrated from 3 baseline runs" in result.message


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
        ({"gate": [{"parity": "maybe"}]}, "parity must be"),
        ({"gate": [{"metric": "rtf", "at_most": 1.0}, {"metric": "rtf", "at_most": 1.0}]}, "duplicate gate"),
        ({"settings": {"alpha": 2}, "gate": [{"metric": "rtf", "at_most": 1.0}]}, "alpha must be"),
        ({}, "no gates"),
    ],
)
def test_bad_gates_files_name_the_problem(document: dict[str, object], named: str) -> None:
    with pytest.raises(GateError, match=re.escape(named)):
        parse_gates(document)


def test_committed_example_gates_file_parses() -> None:
    spec = load_gates(Path(__file__).resolve().parent.parent / "results" / "baselines" / "gates.toml")
    assert len(spec.gates) == 6
