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
# # Parity: error by stage, codebook match, audio
#
# Reads a `qtts-eval parity` output directory (dumps + report.json; see `docs/parity.md`). By default it
# runs a planted fault (one talker weight perturbed) on the tiny checkpoint, which must fail at the talker.

# %% tags=["parameters"]
RESULTS_ROOT = "../results"  # results directory (relative to notebooks/)
PARITY_DIR = "parity-notebook"  # under RESULTS_ROOT; created by `qtts-eval parity CANDIDATE` when missing
CANDIDATE = "fault:talker-weight"  # used only when the directory is missing
MODEL = "tiny"

# %%
from pathlib import Path

from IPython.display import Audio, Image, display

from qtts_eval import report
from qtts_eval.units import SAMPLE_RATE_HZ

result = report.load_parity(report.ensure_parity(Path(RESULTS_ROOT) / PARITY_DIR, CANDIDATE, MODEL))
print(f"{result.candidate} [{result.profile.name}]: {result.verdict_line()}")

# %%
table = report.parity_table(result)
table[table["status"] != "skip"]

# %%
for name, png in report.parity_images(result).items():
    print(name)
    display(Image(data=png))

# %%
for side, wav in report.parity_audio(result).items():
    print(side)
    display(Audio(wav, rate=SAMPLE_RATE_HZ))
