"""Measured gate error rates on the real tiny reference (docs/gates.md): false alarms and detections.

    OMP_NUM_THREADS=1 PYTHONPATH=. python tests/gate_rates.py --reruns 6 --slowed-runs 4 --out rates.json

A baseline run, then ``--reruns`` unchanged re-runs and ``--slowed-runs`` runs per planted slowdown, all
of the official reference on the tiny checkpoint (CPU, x-vector mode, a few fixtures). The slowdown is a
per-frame delay on one fixture only, added by ``SlowedReference``: the reference pipeline with forward hooks
on the talker that sleep, after every talker step of the chosen text, the planted share of that step's time
(registered at run time; qwen-tts is untouched). Every gate variant is evaluated on every run against the
baseline; a false alarm is a no-change run in which any group of the gate failed, a detection is a slowed
run in which the slowed fixture's group failed.

Also imported by tests/test_gates.py for the one-fixture slowdown test.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from qtts_eval import pipelines
from qtts_eval.bench import Bench, BenchConfig
from qtts_eval.gates import GateInputs, GateSpec, MetricGate, evaluate_gate
from qtts_eval.pipelines.base import Request
from qtts_eval.pipelines.reference import ReferenceOptions, ReferencePipeline

SLOWED = "slowed-reference"  # registry name of SlowedReference


@dataclass(frozen=True)
class SlowedOptions(ReferenceOptions):
    """The reference's options, plus the planted delay (kept out of describe(): the run looks unchanged)."""

    slowdown: float = (
        0.0  # after every talker forward pass (prefill and each frame), sleep this share of it ...
    )
    slow_text: str = ""  # ... in requests with exactly this text; "" slows nothing


class SlowedReference(ReferencePipeline):
    """The official reference with a per-frame delay on one text: a planted, known regression.

    The delay is a share of each talker step's own time, so the slowdown stays the planted fraction of the
    generation however busy the machine is (a fixed delay in ms vanishes when a loaded CPU runs 10x slower).
    """

    options_schema = SlowedOptions
    options: SlowedOptions

    def load(self) -> None:
        super().load()
        self._slow = False
        self._step_began = 0.0
        talker = self.model.model.talker
        talker.register_forward_pre_hook(self._begin)
        talker.register_forward_hook(self._delay)

    def _begin(self, *_: Any) -> None:
        self._step_began = time.perf_counter()

    def _delay(self, *_: Any) -> None:
        if self._slow:
            time.sleep(self.options.slowdown * (time.perf_counter() - self._step_began))

    def stream(self, request: Request) -> Any:
        self._slow = bool(self.options.slow_text) and request.text == self.options.slow_text
        return super().stream(request)


def register() -> None:
    pipelines.register(SLOWED, SlowedReference)


FIXTURES = ("en_one_word", "en_short")  # frame budgets 10 and 41 on synthetic weights
SLOW_FIXTURE = "en_one_word"
GATE_VARIANTS = tuple(
    MetricGate(metric="rtf", statistic=statistic, max_regression=threshold)
    for statistic, threshold in (
        ("median", 0.05),
        ("median", 0.10),
        ("median", 0.20),
        ("p95", 0.10),
        ("p95", 0.20),
    )
)


def config(repeats: int, slowdown: float = 0.0, slow_text: str = "") -> BenchConfig:
    return BenchConfig(
        pipelines=(SLOWED,),
        fixtures=FIXTURES,
        modes=("xvector",),
        repeats=repeats,
        warmup=1,
        speaker_embedder=None,  # only timing is gated here
        options={"slowdown": slowdown, "slow_text": slow_text},
    )


def _failed_groups(current: pd.DataFrame, baseline: pd.DataFrame) -> dict[str, list[str]]:
    failed = {}
    for gate in GATE_VARIANTS:
        result = evaluate_gate(gate, GateSpec((gate,)), GateInputs(current, (baseline,)))
        failed[gate.label] = [g.group for g in result.groups if g.outcome.value == "fail"]
        refused = [g.message for g in result.groups if g.outcome.value == "refused"]
        if refused:
            raise RuntimeError(f"{gate.label} refused: {refused}")
    return failed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reruns", type=int, default=6)
    parser.add_argument("--slowed-runs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--slowdowns", default="0.10,0.30", help="planted per-frame slowdowns, fractions")
    parser.add_argument("--results", type=Path, default=Path("results/gate-rates"))
    parser.add_argument("--out", type=Path, default=Path("gate-rates.json"))
    args = parser.parse_args()
    register()
    from qtts_eval.fixtures import load_fixtures

    slow_text = load_fixtures().text(SLOW_FIXTURE).text
    stamp = time.strftime("%Y%m%dT%H%M%S")
    load_before = os.getloadavg()
    began = time.monotonic()
    baseline = Bench.create(config(args.repeats), args.results, f"{stamp}-baseline").run(progress=False)
    runs: list[dict[str, Any]] = []
    plan = [(0.0, f"rerun{i}") for i in range(args.reruns)]
    for fraction in (float(f) for f in args.slowdowns.split(",")):
        plan += [(fraction, f"slow{fraction:g}-{i}") for i in range(args.slowed_runs)]
    for fraction, name in plan:
        cfg = config(args.repeats, fraction, slow_text if fraction else "")
        frame = Bench.create(cfg, args.results, f"{stamp}-{name}").run(progress=False)
        failed = _failed_groups(frame, baseline)
        runs.append({"run": name, "slowdown": fraction, "failed": failed, "loadavg_1m": os.getloadavg()[0]})
        print(json.dumps(runs[-1]), flush=True)
    slowed_group = f"{SLOWED} fixture_id={SLOW_FIXTURE} mode=xvector"
    rates: dict[str, Any] = {}
    for gate in GATE_VARIANTS:
        row: dict[str, Any] = {}
        for fraction in sorted({run["slowdown"] for run in runs}):
            chosen = [run for run in runs if run["slowdown"] == fraction]
            others = [any(g != slowed_group for g in run["failed"][gate.label]) for run in chosen]
            if fraction == 0:
                row["false_alarm"] = sum(bool(run["failed"][gate.label]) for run in chosen) / len(chosen)
            else:
                hits = [slowed_group in run["failed"][gate.label] for run in chosen]
                row[f"detect_{fraction:g}"] = sum(hits) / len(chosen)
                row[f"other_groups_failed_{fraction:g}"] = sum(others) / len(chosen)
        rates[gate.label] = row
    summary = {
        "fixtures": FIXTURES,
        "slow_fixture": SLOW_FIXTURE,
        "repeats": args.repeats,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "minutes": (time.monotonic() - began) / 60,
        "rates": rates,
        "runs": runs,
    }
    args.out.write_text(json.dumps(summary, indent=2))
    print(json.dumps(rates, indent=2))


if __name__ == "__main__":
    main()
