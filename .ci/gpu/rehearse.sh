#!/usr/bin/env bash
# Run HERE, on CPU: the campaign's rehearsal in an environment built to the GPU image's versions (KINDS.md:
# Python 3.12, torch 2.11 + torchaudio 2.11, transformers 5.17, huggingface_hub 1.33, tokenizers 0.23, numpy
# 2.5, nvidia-ml-py; none of the reference's stack), then .ci/gpu/campaign.sh on the tiny model with the
# same flags as on the device (docs/benchmarks.md, "GPU campaign").
#   bash .ci/gpu/rehearse.sh PYTHON3.12 [VENV]    e.g. "$(pyenv prefix 3.12.1)/bin/python3" venv-image
set -euo pipefail
cd "$(dirname "$0")/../.."
python312=${1:?give a Python 3.12 interpreter}
venv=${2:-/tmp/venv-image}
if [ ! -x "$venv/bin/python" ]; then
  "$python312" -m venv "$venv"
  # PyPI's torch 2.11 wheels are CUDA builds; they run on the CPU as they are.
  "$venv/bin/pip" install -q torch==2.11.0 torchaudio==2.11.0 transformers==5.17.0 huggingface_hub==1.33.0 \
    tokenizers==0.23.2 accelerate==1.15.0 safetensors==0.8.0 numpy==2.5.2 onnxruntime==1.30.0 nvidia-ml-py \
    einops numba scipy scikit-learn joblib lazy-loader msgpack pandas pyarrow tqdm httpx pytest setuptools \
    requests pyyaml regex filelock fsspec packaging typing-extensions hf-xet psutil matplotlib pillow
fi
[ -d .whl ] && [ -d .whl-ports ] || bash .ci/gpu/fetch-wheels.sh
CAMPAIGN_DEVICE=cpu CAMPAIGN_MODEL=tiny CAMPAIGN_PYTHON="$venv/bin/python" OUT=${OUT:-/tmp/campaign-rehearsal} \
  bash .ci/gpu/campaign.sh
