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
# # Quickstart: read a run's records, summary and latency tables
#
# Reads a run's records as pandas. By default it shows the demo run: a small streaming bench of the official
# package on the tiny synthetic checkpoint, built on first use in a scratch directory (never in your results).
# Column meanings: `docs/metrics.md`.

# %% tags=["parameters"]
RESULTS_ROOT = "../results"  # your results directory (relative to notebooks/); only read unless CREATE
RUN_ID = ""  # a run under RESULTS_ROOT (`qtts-eval bench --run-id NAME`); "" = the demo run (tiny, scratch)
CREATE = False  # True: bench RUN_ID into RESULTS_ROOT (tiny checkpoint) when it does not exist

# %%
from qtts_eval import report
from qtts_eval.results import load_run
from qtts_eval.summary import latency_table, summarise

run_dir = report.find_run(RESULTS_ROOT, RUN_ID, create=CREATE)
frame = load_run(run_dir)
frame[["fixture_id", "mode", "status", "text_chars", "frames_generated", "wall_s", "rtf", "first_byte_s"]]

# %% [markdown]
# Per-fixture medians (as `qtts-eval bench` prints them) and latency percentiles with bootstrap intervals.

# %%
summarise(frame)

# %%
latency_table(frame)

# %% [markdown]
# The environment fingerprint travels with every record: synthetic weights say so.

# %%
frame.filter(like="env_").iloc[0][["env_model_ref", "env_synthetic", "env_dtype", "env_device", "env_cpu"]]

# %%
fig = report.plot_rtf_vs_text(frame)
