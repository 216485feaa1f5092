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
# # Latency: chunk timelines, first-byte CDFs, RTF against text length
#
# Definitions (first byte, first playable, gaps, underruns): `docs/metrics.md`.

# %% tags=["parameters"]
RESULTS_ROOT = "../results"  # your results directory (relative to notebooks/); only read unless CREATE
RUN_ID = ""  # a streamed run under RESULTS_ROOT (`bench --run-id NAME`); "" = the demo run (tiny, scratch)
CREATE = False  # True: bench RUN_ID into RESULTS_ROOT (tiny checkpoint) when it does not exist

# %%
from qtts_eval import report
from qtts_eval.results import load_run
from qtts_eval.summary import latency_table

frame = load_run(report.find_run(RESULTS_ROOT, RUN_ID, create=CREATE))
frame[["fixture_id", "chunks", "first_byte_s", "first_playable_s", "gap_p95_s", "underruns", "rtf"]]

# %% [markdown]
# When each chunk reached the harness, and how much audio a player starting at first byte had by then.

# %%
fig = report.plot_chunk_timeline(frame)

# %%
fig = report.plot_latency_cdf(frame, "first_byte_s")

# %%
fig = report.plot_rtf_vs_text(frame)

# %%
latency_table(frame)
