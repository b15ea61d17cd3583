#!/usr/bin/env bash
# Ship a trained adapter as the default guard: copy it into the package, score the calibration,
# test and XSTest splits once with it, fit the default bundle on the calibration split (calibrator
# and Learn-Then-Test thresholds on disjoint halves), and write the scorecard beside TF-IDF.
#
#   scripts/ship_guard.sh RUN_DIR [METHOD] [ALPHA_SAFE] [ALPHA_UNSAFE] [WINDOW_TOKENS]
#
# RUN_DIR is a `guardcal train` output folder (adapter_config.json + adapter_model.safetensors).
# Choose METHOD and the targets on the calibration split only (the scorecard's calib rows), never on
# test or XSTest. Takes ~30-60 min on 2 CPU cores (1,630 texts scored once).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:?usage: scripts/ship_guard.sh RUN_DIR [METHOD] [ALPHA_SAFE] [ALPHA_UNSAFE] [WINDOW_TOKENS]}
METHOD=${2:-platt}
ALPHA=${3:-0.05}
ALPHA_UNSAFE=${4:-0.1}
WINDOW=${5:-256}
BIN=${BIN:-.venv/bin}
export GUARDCAL_DATA_DIR=${GUARDCAL_DATA_DIR:-$(cd ../shared/data && pwd)} HF_HUB_OFFLINE=1

ASSET=guardcal/assets/default_adapter
rm -f "$ASSET"/*
cp "$RUN/adapter_config.json" "$RUN/adapter_model.safetensors" "$ASSET/"
cp "$RUN/train_config.json" "$ASSET/"

OUT=results/guard
mkdir -p "$OUT/training"
# the run's provenance beside its results: resolved config, log (per-class recall at every evaluation)
cp "$RUN/train_config.json" "$RUN/log.jsonl" "$OUT/training/"
"$BIN/guardcal" evaluate --adapter default --max-input-tokens "$WINDOW" --no-progress \
    --dataset openai-moderation:calib --dataset openai-moderation:test --dataset xstest --output "$OUT/eval"
"$BIN/python" benchmarks/guard_scorecard.py --predictions "$OUT/eval" --name guard --output "$OUT" \
    --method "$METHOD" --target-error "$ALPHA" --target-error-unsafe "$ALPHA_UNSAFE"
"$BIN/guardcal" calibrate --predictions "$OUT/eval" --adapter default --max-input-tokens "$WINDOW" \
    --method "$METHOD" --target-error "$ALPHA" --target-error-unsafe "$ALPHA_UNSAFE" \
    --output guardcal/assets/default_bundle.json --report "$OUT/calibrate"
