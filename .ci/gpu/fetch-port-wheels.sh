#!/usr/bin/env bash
# Run HERE (not on the GPU machine): downloads the cp312 wheels of the GPU ports into .whl-ports/ (git-ignored
# through .git/info/exclude), for `run(carry=[".whl", ".whl-ports"])` with .ci/gpu/ports.sh. Nothing of a port
# enters the repository: the wheels come from PyPI at fetch time. The GPU image already has torch 2.11.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl-ports/' .git/info/exclude || echo '/.whl-ports/' >> .git/info/exclude
rm -rf .whl-ports && mkdir .whl-ports
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
get() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl-ports "$@"
}
# faster-qwen3-tts: a transformers-5 build of qwen_tts (qwen-tts-hf) and the transformers/hub it requires.
get faster-qwen3-tts==0.5.4 qwen-tts-hf==0.1.1.post1 'transformers>=5.15.1,<6' 'huggingface_hub>=1.5,<2'
# Carried for the record and for a later adapter; no consistent environment exists for them yet (docs/ports.md).
get qwen3-tts-triton==0.3.0 qwen3-tts-streaming==0.1.2
du -sh .whl-ports && ls .whl-ports
