# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Regressions: metric history, detected steps, gate outcomes
#
# Lists every run under a results directory (`qtts-eval history`), detects steps within each series of
# comparable runs, and evaluates a gates file (`qtts-eval gate`); method and format: `docs/gates.md`.
# By default it reads a demo history instead of yours: calibration-pipeline runs with a planted 30 % slowdown,
# built on first use in a scratch directory, so there is a step to find and a gate to fail.

# %% tags=["parameters"]
RESULTS_ROOT = "../results"  # the history to read when DEMO is False (relative to notebooks/); only read
DEMO = True  # True: the demo history (scratch directory) instead of RESULTS_ROOT
GATES = "../results/baselines/gates.toml"  # gates file
METRIC = "first_byte_s"
CURRENT_RUN = ""  # the run to gate ("" = the newest)
BASELINE_RUNS: tuple[str, ...] = ()  # runs to gate it against (() = the three oldest runs of its series)

# %%
from dataclasses import replace
from pathlib import Path

from qtts_eval import report
from qtts_eval.gates import evaluate, load_gates, load_inputs, results_table
from qtts_eval.history import history_steps, load_history

# The demo's slowdown is planted by changing the calibration pipeline's delays, which its records state.
MAY_DIFFER = report.DEMO_MAY_DIFFER if DEMO else frozenset()
history = load_history(report.demo_history() if DEMO else Path(RESULTS_ROOT), MAY_DIFFER)
history.runs.drop(columns=["series", "path"])

# %%
steps = history_steps(history, METRIC)
steps

# %%
fig = report.plot_history(history, METRIC, steps)

# %% [markdown]
# Gates: the newest run against its baselines (thresholds calibrated to their spread). In the demo, the
# newest run is after the planted step and the baselines before it, so the relative gates fail.

# %%
current, baselines = report.gate_runs(history, CURRENT_RUN, BASELINE_RUNS)
print(f"{current.name} against {', '.join(path.name for path in baselines)}")
spec = load_gates(Path(GATES))
spec = replace(spec, may_differ=spec.may_differ | MAY_DIFFER)
results_table(evaluate(spec, load_inputs(current, baselines)))
