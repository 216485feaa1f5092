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
# # Candidate against reference, from one run
#
# A run that benchmarked a candidate beside the reference (`qtts-eval bench --pipeline reference --pipeline
# worker ...`, interleaved on the same cells) answers "is it faster, and did it do the same work?". This is
# `qtts-eval compare`'s table (qtts_eval/compare.py): requests paired on fixture, voice, mode and repeat; per
# fixture and mode and over all pairs, the median of the paired ratios candidate / reference of first
# playable (the headline), first byte, RTF and peak memory with 95 % bootstrap intervals; the share of pairs
# with the same codes; errors; and flags where the two did different work. By default it shows the demo run:
# the reference against the same reference served over stdio by `qtts-eval worker`, built on first use in a
# scratch directory (the ratios are the wire's overhead).

# %% tags=["parameters"]
RESULTS_ROOT = "../results"  # your results directory (relative to notebooks/); only read
RUN_ID = ""  # a run under RESULTS_ROOT with the reference and a candidate; "" = the demo run (scratch)
CANDIDATE = ""  # the candidate's pipeline name in that run ("" = its only pipeline besides the reference)
REFERENCE = "reference"

# %%
from qtts_eval import report
from qtts_eval.results import load_run

frame = load_run(report.find_run(RESULTS_ROOT, RUN_ID, demo="compare-demo"))
table = report.comparison_table(frame, CANDIDATE, REFERENCE)
table

# %% [markdown]
# Ratios below 1 favour the candidate. `flags` says why a row's speed is not "the same work, faster":
# `codes_differ`, `stops_earlier` / `stops_later` (a candidate that stops earlier looks faster for it),
# `errors`, and `no_codes` when the records carry no codes to compare (same work unknown, not assumed).

# %%
fig = report.plot_comparison(table)
