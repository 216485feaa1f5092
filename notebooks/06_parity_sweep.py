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
# # Browse parity reports: which candidates pass, where the others fail
#
# Lists every parity report under a folder (a `qtts-eval parity` sweep's `--out`, one report per fixture ×
# mode × voice, or a folder of single runs), with its request, verdict, the first failing stage and how many
# free-running codes matched the reference, then opens one of them stage by stage. By default it shows a
# demo on the tiny checkpoint, run on first use in a scratch directory: the reference against itself
# (passes) and a planted fault (fails at the talker).

# %% tags=["parameters"]
RESULTS_ROOT = "../results"  # your results directory (relative to notebooks/); only read
SWEEP_DIR = ""  # a sweep's --out (or a folder of parity --out directories) under RESULTS_ROOT; "" = the demo
SHOW = ""  # the report to open, as listed in the table's `report` column ("" = the first that fails)
SCOREBOARD_DIR = ""  # a `qtts-eval scoreboard --out` directory under RESULTS_ROOT; "" = the demo (scratch)

# %%
from qtts_eval import report

sweep = report.find_parity_sweep(RESULTS_ROOT, SWEEP_DIR)
table = report.parity_sweep_table(sweep)
table

# %%
fig = report.plot_parity_sweep(table)

# %%
result = report.load_parity(report.sweep_report(sweep, table, SHOW))
print(f"{result.candidate}: {'PASS' if result.passed else 'FAIL'} under profile {result.profile.name}")
stages = report.parity_table(result)
stages[stages["status"] != "skip"]

# %% [markdown]
# ## The scoreboard: every candidate's verdicts side by side
#
# `qtts-eval scoreboard` runs conformance, a parity sweep per mode and a same-work bench for every installable
# candidate; its verdict table (the parity and bench tables: `scoreboard_table(board, "parity")`, `"bench"`).
# The demo scores one planted fault's x-vector parity on the tiny checkpoint.

# %%
board = report.find_scoreboard(RESULTS_ROOT, SCOREBOARD_DIR)
report.scoreboard_table(board)
