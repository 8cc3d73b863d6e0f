#!/usr/bin/env bash
# Selective attention's context pruning on the char-LM demo: trains the
# plain and the selective model of configs/charlm*.json on the fortunes
# (skipped when runs/charlm*/checkpoint.safetensors exist), then prints the
# table of held-out bits per character, peak KV cache and decoding speed per
# budget (benchmarks/pruning.cpp). STEPS (default 1200) sets the training length.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-1200}
DATA=${DATA:-/usr/share/games/fortunes}
cmake --build build -j2 --target loom-cli loom-pruning-bench >/dev/null
for v in charlm charlm_selective; do
  [ -f runs/$v/checkpoint.safetensors ] ||
    build/loom train --config configs/$v.json --data "$DATA" --out runs/$v --steps "$STEPS" --lr 2e-3
done
grep -m1 'model name' /proc/cpuinfo
build/benchmarks/loom-pruning-bench --selective runs/charlm_selective --plain runs/charlm --data "$DATA" "$@"
