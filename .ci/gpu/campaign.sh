#!/usr/bin/env bash
# The GPU campaign: one device call of at most 8 minutes that turns a lease into numbers.
#   here:   bash .ci/gpu/fetch-wheels.sh            (once: .whl and .whl-ports, git-ignored)
#   device: run(command="bash .ci/gpu/campaign.sh", carry=[".whl", ".whl-ports"], timeout_s=540)
#   CPU rehearsal (docs/benchmarks.md): CAMPAIGN_DEVICE=cpu CAMPAIGN_MODEL=tiny bash .ci/gpu/campaign.sh
# Steps: install the carried wheels; preflight (python -m qtts_eval.cli.preflight: every import, then a
# 2-frame request through each pipeline with the campaign's exact flags on tiny), stopping with one line if
# the reference cannot run; then, in order of value, each a `qtts-eval bench` run whose records reach $OUT as
# they are written: (1) the reference streamed, bf16 talker, fp32 codec, x-vector and ICL; (2) the same with
# --left-context exact; (3) faster-qwen3-tts beside the reference on the same work (skipped, with its
# preflight's line, when the port cannot run). At most 7 files come back: campaign.log and, per run,
# <run>.records.jsonl and <run>.summary.json.
set -uo pipefail
cd "$(dirname "$0")/../.."
started=$(date +%s)
budget=${CAMPAIGN_SECONDS:-470}  # the whole script; the device call's limit is 540 s
device=${CAMPAIGN_DEVICE:-cuda:0}
model=${CAMPAIGN_MODEL:-0.6b-base}
python=${CAMPAIGN_PYTHON:-python3}
out=${OUT:-/tmp/campaign-out}
work=${CAMPAIGN_WORK:-/tmp/qtts-campaign}
results=$work/results
rm -rf "$work" && mkdir -p "$out" "$results"
log=$out/campaign.log
say() { echo "[$(( $(date +%s) - started )) s] $*" | tee -a "$log"; }
left() { echo $(( budget - ($(date +%s) - started) )); }
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 QTTS_EVAL_CACHE=$work/cache QTTS_EVAL_FIXTURES=$PWD/fixtures

copy_out() {  # a killed run still returns what each bench has appended so far
  for run in "$results"/*/; do
    [ -d "$run" ] || continue
    for file in records.jsonl summary.json; do
      [ -f "$run$file" ] && cp "$run$file" "$out/$(basename "$run").$file"
    done
  done
}
( while sleep 10; do copy_out; done ) & copier=$!
trap 'copy_out; kill $copier 2>/dev/null' EXIT

say "campaign on $device, model $model, python $($python -c 'import sys; print(sys.version.split()[0])')"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >>"$log"
$python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$work/site" \
  .whl/*.whl >>"$log" 2>&1 || { say "FAILED: installing the carried wheels (.whl); pip's reason is above"; exit 1; }
# The project itself too, so its pipeline entry points are registered (no network: no build isolation).
$python -m pip install -q --no-index --no-deps --no-build-isolation --target "$work/site" . >>"$log" 2>&1 \
  || { say "FAILED: installing qtts-eval itself; pip's reason is above"; exit 1; }
export PYTHONPATH=$work/site
qtts() { $python -m qtts_eval "$@"; }

common=(--device "$device" --dtype bfloat16 --codec-dtype float32 --voice slt --fixture en_short
        --fixture en_medium --stream --speaker-embedder none --asr none --no-progress)
preflight() {  # one line on stdout: ok, or what is missing
  local line
  line=$(timeout 120 $python -m qtts_eval.cli.preflight "$@" 2>>"$log") || true
  say "${line:-preflight FAILED: no answer within 120 s (its stderr is above)}"
  [[ $line == "preflight ok"* ]]
}
preflight --pipeline reference --model tiny "${common[@]}" || exit 3

port=yes
port_flags=(--mode xvector --non-streaming-mode xvector)  # one prompt layout, asked of both sides
if qtts candidates install faster-qwen3-tts --pip-arg=--no-index --pip-arg=--no-deps \
    --pip-arg=--find-links=$PWD/.whl-ports --pip-arg=--find-links=$PWD/.whl \
    --pip-arg=--requirement=$PWD/.whl-ports/requirements.txt >>"$log" 2>&1; then
  preflight --pipeline reference --pipeline faster-qwen3-tts --model tiny "${port_flags[@]}" "${common[@]}" \
    || port=no
else
  say "faster-qwen3-tts: its environment did not install (pip's reason is above); its run is skipped"
  port=no
fi

qtts checkpoint "$model" >>"$log" 2>&1 || { say "FAILED: building $model"; exit 1; }
say "checkpoint $model ready"
bench() {  # RUN_ID FLAGS...: one bench run, stopped when the campaign's time is up
  local run=$1 time; shift
  time=$(left)
  if [ "$time" -lt 30 ]; then say "$run: skipped, $time s left"; return; fi
  say "$run: starting with $time s left"
  timeout "$time" $python -m qtts_eval bench --model "$model" --results "$results" --run-id "$run" "$@" \
    >>"$log" 2>&1
  local rc=$? records=$results/$run/records.jsonl
  say "$run: exit $rc, $( [ -f "$records" ] && wc -l < "$records" || echo 0) records"
  copy_out
}
bench reference --pipeline reference --mode xvector --mode icl --repeats 3 "${common[@]}"
bench exact --pipeline reference --mode xvector --repeats 3 --left-context exact "${common[@]}"
if [ $port = yes ]; then
  bench ports --pipeline reference --pipeline faster-qwen3-tts --repeats 3 "${port_flags[@]}" "${common[@]}"
  timeout 60 $python -m qtts_eval compare "$results/ports" --candidate faster-qwen3-tts >>"$log" 2>&1
fi
say "campaign done"
