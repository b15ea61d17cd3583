#!/usr/bin/env bash
# The small-scale replication on this CPU: train SFT, GRPO and cal-GRPO (cpu-small
# profile) on openai-moderation:train, then evaluate each on openai-moderation:test
# and xstest. Resumable: finished runs are skipped, unfinished ones resume from
# their newest checkpoint. Usage: scripts/replicate.sh [run ...], where a run is a
# method (sft grpo cal-grpo rlcr capo) or cal-grpo-brier (cal-grpo with the Brier
# loss); TRAIN_ARGS adds flags to every training (the committed GRPO-family runs
# used TRAIN_ARGS="--max-steps 20").
set -euo pipefail
cd "$(dirname "$0")/.."
export GUARDCAL_DATA_DIR=${GUARDCAL_DATA_DIR:-$(cd .. && pwd)/shared/data}
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
GC=.venv/bin/guardcal
RUNS=${RUNS:-runs}
methods=("${@:-sft grpo cal-grpo}")
for method in ${methods[@]}; do
  out=$RUNS/$method
  case $method in
    cal-grpo-brier) flags=(--method cal-grpo --calibration-loss brier) ;;
    *) flags=(--method "$method") ;;
  esac
  if [ ! -f "$out/train_summary.json" ]; then
    $GC train "${flags[@]}" --profile cpu-small --output "$out" ${TRAIN_ARGS:-}
  fi
  res=results/$method
  if [ ! -f "$res/metrics.json" ]; then
    mode=(); [ "$method" = sft ] || mode=(--reasoning --max-new-tokens 16)
    $GC evaluate --adapter "$out" "${mode[@]}" --no-progress \
      --dataset openai-moderation:calib --dataset openai-moderation:test --dataset xstest --output "$res"
    mkdir -p "$res/training"
    cp "$out"/{log.jsonl,train_config.json,train_summary.json,split_manifest.json} "$res/training/"
  fi
done
