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
# A run that benchmarked a candidate beside the reference (`qtts-eval bench --pipelines reference,worker
# ...`, interleaved on the same cells) answers "is it faster, and did it do the same work?": per fixture,
# voice and mode, the ratio of the candidate's medians to the reference's, the frames each side generated,
# and whether the codes matched where the records say so. By default it shows the demo run: the reference
# against the same reference served over stdio by `qtts-eval worker`, built on first use in a scratch
# directory (the ratios are the wire's overhead).

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
# Ratios below 1 favour the candidate. A row whose `same_frames` is False compares unequal work: a
# candidate that stops earlier looks faster for it. `codes_match` says "not recorded" when the run's records
# carry no codes comparison (the reference and candidate codes are then unknown to be equal).

# %%
fig = report.plot_comparison(table)
