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
# Reads a `qtts-eval parity --out` directory (dumps + report.json; see `docs/parity.md`). By default it shows
# the demo: a planted fault (one talker weight perturbed) on the tiny checkpoint, run on first use in a
# scratch directory; it must fail at the talker.

# %% tags=["parameters"]
RESULTS_ROOT = "../results"  # your results directory (relative to notebooks/); only read unless CREATE
PARITY_DIR = ""  # under RESULTS_ROOT (`qtts-eval parity CANDIDATE --out DIR`); "" = the demo (scratch)
CREATE = False  # True: run `qtts-eval parity CANDIDATE --model MODEL` into PARITY_DIR when it is missing
CANDIDATE = "fault:talker-weight"  # used only by CREATE
MODEL = "tiny"  # used only by CREATE

# %%
from IPython.display import Audio, Image, display

from qtts_eval import report
from qtts_eval.units import SAMPLE_RATE_HZ

result = report.load_parity(report.find_parity(RESULTS_ROOT, PARITY_DIR, CREATE, CANDIDATE, MODEL))
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
