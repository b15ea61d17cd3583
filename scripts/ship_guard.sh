#!/usr/bin/env bash
# Ship a trained adapter as the default guard: copy it into the package, score the calibration,
# test and XSTest splits once with it, fit the default bundle on the calibration split (calibrator
# and Learn-Then-Test thresholds on disjoint parts, or both on every row with THRESHOLD_ROWS=all),
# and write the scorecard beside TF-IDF.
#
#   [THRESHOLD_ROWS=held-out|all] [THRESHOLD_SHARE=0.5] \
#       scripts/ship_guard.sh RUN_DIR [METHOD] [ALPHA_SAFE] [ALPHA_UNSAFE] [WINDOW_TOKENS]
#
# RUN_DIR is a `guardcal train` output folder (adapter_config.json + adapter_model.safetensors, and
# pooled_head.safetensors + head_fit.json for a pooled head), or a scripts/probe_readout.py output folder.
# Choose METHOD and the targets on the calibration split only (the scorecard's calib rows), never on
# test or XSTest. Takes ~30-60 min on 2 CPU cores (1,630 texts scored once).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:?usage: scripts/ship_guard.sh RUN_DIR [METHOD] [ALPHA_SAFE] [ALPHA_UNSAFE] [WINDOW_TOKENS]}
METHOD=${2:-platt}
ALPHA=${3:-0.05}
ALPHA_UNSAFE=${4:-0.1}
WINDOW=${5:-256}
SHARE=${THRESHOLD_SHARE:-0.5}  # share of the calibration rows held out from the calibrator for the thresholds
ROWS=${THRESHOLD_ROWS:-held-out}  # all: every calibration row fits the calibrator and chooses the thresholds
BIN=${BIN:-.venv/bin}
export GUARDCAL_DATA_DIR=${GUARDCAL_DATA_DIR:-$(cd ../shared/data && pwd)} HF_HUB_OFFLINE=1

ASSET=guardcal/assets/default_adapter
# a run that went on from the shipped adapter (--adapter default) keeps that adapter's provenance
PREV=$(mktemp -d)
trap 'rm -rf "$PREV"' EXIT
cp "$ASSET"/train_config.json "$ASSET"/probe_readout.json "$ASSET"/training_data.json results/guard/training/log.jsonl \
    "$PREV"/ 2>/dev/null || true
rm -f "$ASSET"/*
cp "$RUN/adapter_config.json" "$RUN/adapter_model.safetensors" "$ASSET/"
# a pooled head (guardcal/core/pooled_head.py) is read in place of the decision token, and its fit ships beside it
if [ -f "$RUN/pooled_head.safetensors" ]; then cp "$RUN/pooled_head.safetensors" "$ASSET/"; fi
if [ -f "$RUN/head_fit.json" ]; then cp "$RUN/head_fit.json" "$ASSET/"; fi

OUT=results/guard
rm -rf "$OUT/training" && mkdir -p "$OUT/training"
# the run's provenance, in the package and beside its results: the resolved training config and log
# (per-class recall at every evaluation) of a `guardcal train` run, and the probe fit
# (scripts/probe_readout.py) of a readout adapter or of the readout the run started from
START=$RUN
if [ -f "$RUN/train_config.json" ]; then
    cp "$RUN/train_config.json" "$ASSET/"
    cp "$RUN/train_config.json" "$OUT/training/"
    # a gradient run's log (per-class recall at every evaluation); a head's fit (CV score of every C)
    for f in log.jsonl head_fit.json; do if [ -f "$RUN/$f" ]; then cp "$RUN/$f" "$OUT/training/"; fi; done
    START=$("$BIN/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["adapter"] or "")' "$RUN/train_config.json")
    # a jsonl training mix (scripts/build_request_mix.py) ships its manifest: sources, licenses, sha256
    DATA=$("$BIN/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["train_dataset"])' "$RUN/train_config.json")
    case "$DATA" in jsonl:*)
        MANIFEST=$(dirname "${DATA#jsonl:}")/manifest.json
        cp "$MANIFEST" "$ASSET/training_data.json"
        cp "$MANIFEST" "$OUT/training/training_data.json" ;;
    esac
fi
# the adapter the run started from: the shipped default, or a folder holding a trained adapter (e.g. an
# earlier default extracted with git show, with its train_config.json and, where kept, its log.jsonl)
if [ "$START" = default ]; then
    START=$PREV
fi
if [ -n "$START" ] && [ -f "$START/train_config.json" ]; then
    cp "$START/train_config.json" "$ASSET/base_train_config.json"
    cp "$START/train_config.json" "$OUT/training/base_train_config.json"
    if [ -f "$START/log.jsonl" ]; then cp "$START/log.jsonl" "$OUT/training/base_log.jsonl"; fi
    # the start's own training mix (a head fitted on a shipped LoRA keeps the LoRA's data beside its own)
    if [ -f "$START/training_data.json" ]; then
        cp "$START/training_data.json" "$ASSET/base_training_data.json"
        cp "$START/training_data.json" "$OUT/training/base_training_data.json"
    fi
fi
if [ -n "$START" ] && [ -f "$START/probe_readout.json" ]; then
    cp "$START/probe_readout.json" "$ASSET/"
    cp "$START/probe_readout.json" "$OUT/training/"
fi
# REUSE_EVAL=1: keep $OUT/eval (scored by an earlier run of this script with the same adapter) and only refit
if [ "${REUSE_EVAL:-0}" = 1 ]; then
    "$BIN/python" -c 'import json,sys; from guardcal.models.loading import adapter_fingerprint as f
h = json.load(open(sys.argv[1]))["adapter_hash"]
sys.exit(0 if h == f("default") else f"{sys.argv[1]} scored adapter {h}, not the one being shipped: drop REUSE_EVAL")' "$OUT/eval/run.json"
else
"$BIN/guardcal" evaluate --adapter default --max-input-tokens "$WINDOW" --no-progress \
    --dataset openai-moderation:calib --dataset openai-moderation:test --dataset xstest --output "$OUT/eval"
fi
"$BIN/python" benchmarks/guard_scorecard.py --predictions "$OUT/eval" --name guard --output "$OUT" \
    --tfidf-train "${DATA:-openai-moderation:train}" \
    --method "$METHOD" --target-error "$ALPHA" --target-error-unsafe "$ALPHA_UNSAFE" \
    --threshold-share "$SHARE" --threshold-rows "$ROWS"
"$BIN/guardcal" calibrate --predictions "$OUT/eval" --adapter default --max-input-tokens "$WINDOW" \
    --method "$METHOD" --target-error "$ALPHA" --target-error-unsafe "$ALPHA_UNSAFE" \
    --threshold-share "$SHARE" --threshold-rows "$ROWS" \
    --output guardcal/assets/default_bundle.json --report "$OUT/calibrate"
