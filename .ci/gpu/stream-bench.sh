#!/usr/bin/env bash
# Run ON the GPU machine (device tool), with .whl carried:
#   run(command="bash .ci/gpu/stream-bench.sh", carry=[".whl"], timeout_s=540)
# Builds the 0.6b-base synthetic checkpoint (real shapes), streams the reference with the talker in bf16 and
# the codec in fp32 for a fixed frame budget, and writes first-byte / RTF / VRAM tables under $OUT.
set -euo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 QTTS_EVAL_CACHE=/tmp/qtts-cache
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
# The project itself too, so its pipeline entry points are registered (no network: no build isolation).
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site .
export PYTHONPATH=/tmp/site QTTS_EVAL_FIXTURES="$PWD/fixtures"
out="${OUT:-/tmp/out}"; mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.csv"
python3 -c "import torch, transformers, qwen_tts; print(torch.__version__, transformers.__version__)"
python3 -m qtts_eval checkpoint 0.6b-base
common=(--model 0.6b-base --device cuda:0 --dtype bfloat16 --codec-dtype float32 --voice slt
        --fixture en_short --fixture en_medium --fixture zh_short --fixture en_long --repeats 3 --no-progress
        --results "$out" --stream --asr none)  # latency only: no pocketsphinx wheel is carried
python3 -m qtts_eval bench "${common[@]}" --run-id stream-bf16 2>&1 | tee "$out/stream-bf16.txt"
python3 -m qtts_eval bench "${common[@]}" --run-id stream-bf16-exact --left-context exact --mode xvector \
  2>&1 | tee "$out/stream-bf16-exact.txt"
# Only the small files come back (8 files at most): tables, summaries and the records as JSON lines.
for run in stream-bf16 stream-bf16-exact; do
  cp "$out/$run/summary.json" "$out/$run.summary.json"; cp "$out/$run/records.jsonl" "$out/$run.records.jsonl"
  rm -rf "${out:?}/$run"
done
