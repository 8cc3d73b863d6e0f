#!/usr/bin/env bash
# Selective attention's context pruning on the char-LM demo: trains the
# plain model, the selective one and the selective one with the memory loss
# (configs/charlm.json, charlm_selective.json, charlm_selective_mem.json) on
# the fortunes (skipped when runs/*/checkpoint.safetensors exist), then
# prints the table of held-out bits per character, peak KV cache and decoding
# speed per budget, with per-layer budgets chosen on other held-out windows
# (benchmarks/pruning.cpp). STEPS (default 1200) sets the training length.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-1200}
DATA=${DATA:-/usr/share/games/fortunes}
cmake --build build -j2 --target loom-cli loom-pruning-bench >/dev/null
for v in charlm charlm_selective charlm_selective_mem; do
  [ -f runs/$v/checkpoint.safetensors ] ||
    build/loom train --config configs/$v.json --data "$DATA" --out runs/$v --steps "$STEPS" --lr 2e-3
done
grep -m1 'model name' /proc/cpuinfo
build/benchmarks/loom-pruning-bench --selective runs/charlm_selective --selective-mem runs/charlm_selective_mem \
  --plain runs/charlm --data "$DATA" "$@"
