#!/usr/bin/env bash
# The soak of docs/limits.md: 2,000 steps of the tiny multimodal recipe (release CLI; validation
# and checkpoints off), the process's resident memory sampled every 5 s, then the growth after
# a 100-step warm-up. Usage: bash xtask/soak.sh [STEPS]   (about 27 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${1:-2000}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo build --release -q -p automodel-cli
target/release/automodel-cli finetune --config recipes/gemma3n-tiny-multimodal.yaml \
  --set step_scheduler.max_steps="$steps" --set validation_dataset=null \
  --set step_scheduler.ckpt_every_steps=null --set step_scheduler.val_every_steps=null \
  --set checkpoint.enabled=false --output-dir "$work/run" > "$work/out" 2>&1 &
pid=$!
start=$SECONDS
while kill -0 $pid 2>/dev/null; do
  rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status 2>/dev/null || true)
  done_steps=$(wc -l < "$work/run/training.jsonl" 2>/dev/null || echo 0)
  [ -n "$rss" ] && echo "$((SECONDS - start)) $done_steps $rss" >> "$work/rss"
  sleep 5
done
wait $pid
# fails (exit 1) when the resident memory after the warm-up grows past the bound (2 %)
cargo xtask soak-check "$work/rss" "$work/run/training.jsonl"
