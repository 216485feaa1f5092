#!/usr/bin/env bash
# Run ON the GPU machine (device tool), after .ci/gpu/fetch-wheels.sh and .ci/gpu/fetch-port-wheels.sh here:
#   run(command="bash .ci/gpu/ports.sh", carry=[".whl", ".whl-ports"], timeout_s=560)
# Builds the 0.6b-base synthetic checkpoint, installs faster-qwen3-tts into its own venv (offline, from the
# carried wheels, over the image's torch), checks it against the protocol, then benches the reference and the
# port side by side in one run. Prepared, not yet run: see docs/benchmarks.md.
set -euo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 QTTS_EVAL_CACHE=/tmp/qtts-cache
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site .
export PYTHONPATH=/tmp/site QTTS_EVAL_FIXTURES="$PWD/fixtures"
out="${OUT:-/tmp/out}"; mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.csv"
python3 -m qtts_eval checkpoint 0.6b-base
python3 -m qtts_eval candidates install faster-qwen3-tts \
  --pip-arg=--no-index --pip-arg="--find-links=$PWD/.whl-ports" --pip-arg="--find-links=$PWD/.whl" \
  2>&1 | tee "$out/install.txt"
worker=$(python3 -m qtts_eval candidates command faster-qwen3-tts --model 0.6b-base --device cuda:0 --dtype bfloat16)
python3 -m qtts_eval check-worker "$worker" --frames 4 2>&1 | tee "$out/conformance.txt" || true
python3 -m qtts_eval bench --model 0.6b-base --device cuda:0 --dtype bfloat16 --codec-dtype float32 \
  --pipeline reference --pipeline faster-qwen3-tts --fixture en_short --fixture en_medium --voice slt \
  --repeats 3 --no-progress --results "$out" --run-id ports 2>&1 | tee "$out/ports.txt"
# The other GPU ports: does a consistent offline install exist? (docs/ports.md says why none has been built.)
for port in qwen3-tts-triton==0.3.0 qwen3-tts-streaming==0.1.2; do
  python3 -m pip install --dry-run --no-index --find-links .whl-ports --find-links .whl "$port" \
    > "$out/${port%%==*}.dry-run.txt" 2>&1 || true
done
cp "$out/ports/summary.json" "$out/ports.summary.json"; cp "$out/ports/records.jsonl" "$out/ports.records.jsonl"
rm -rf "${out:?}/ports"
