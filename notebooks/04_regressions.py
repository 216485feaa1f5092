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
# Lists every run under the results directory (`qtts-eval history`), detects steps within each series of
# comparable runs, and evaluates a gates file (`qtts-eval gate`); method and format: `docs/gates.md`.
# With `DEMO_HISTORY`, a history of calibration-pipeline runs with a planted 30 % slowdown is added under
# `RESULTS_ROOT/demo-history`, so there is a step to find and a gate to fail.

# %% tags=["parameters"]
RESULTS_ROOT = "../results"  # results directory (relative to notebooks/)
RUN_ID = "notebook-tiny"  # a tiny-checkpoint run (created when missing), shown in the history
DEMO_HISTORY = True  # add the planted-step demo history
GATES = "../results/baselines/gates.toml"  # gates file
METRIC = "first_byte_s"

# %%
from pathlib import Path

from qtts_eval import report
from qtts_eval.gates import evaluate, load_gates, load_inputs, results_table
from qtts_eval.history import history_steps, load_history

report.ensure_run(RESULTS_ROOT, RUN_ID)
if DEMO_HISTORY:
    report.ensure_demo_history(RESULTS_ROOT)
history = load_history(Path(RESULTS_ROOT))
history.runs.drop(columns=["series", "path"])

# %%
steps = history_steps(history, METRIC)
steps

# %%
fig = report.plot_history(history, METRIC, steps)

# %% [markdown]
# Gates: the latest run of the demo history against the three runs before its step (thresholds calibrated
# to their spread), then the tiny run against itself, which must pass every comparison.

# %%
demo = history.runs[history.runs["path"].str.contains("demo-history")]
current = Path(demo["path"].iloc[-1]) if len(demo) else Path(RESULTS_ROOT) / RUN_ID
baselines = [Path(path) for path in demo["path"].iloc[:3]] or [Path(RESULTS_ROOT) / RUN_ID]
results_table(evaluate(load_gates(Path(GATES)), load_inputs(current, baselines)))
