#!/bin/sh
# bfloat16 autocast quality against fp32 (issue 16), a benchmark, not a test:
#   1. the README's char-LM demo (configs/charlm.json on fortunes, 1200 steps, lr 2e-3) trained
#      with --precision fp32 and --precision bf16: held-out bits per character within 0.02
#      (both checkpoints evaluated by `loom eval` in fp32 on the same 256 windows, and each run's
#      own last evaluation, the bf16 run's in bf16);
#   2. the medium config (dim 256 x 4 layers, 4 heads of 64, seq 256, batch 8) for 200 steps:
#      the training loss at every 10th step within 1 % of fp32 (same data order and weights).
# Usage: benchmarks/bf16_quality.sh [BUILD_DIR] [OUT_DIR]    (defaults: build, runs/bf16_quality)
# LOOM_QUALITY_SIDE_BY_SIDE=1 runs the fp32 and bf16 runs of each model at the same time, each on one
# OpenMP thread (on a shared machine: no thread waits at a barrier for a descheduled partner).
# Prints one line per figure and "PASS"/"FAIL" per target; exit code 1 if a target fails.
set -eu
build=${1:-build}
out=${2:-runs/bf16_quality}
data=${LOOM_QUALITY_DATA:-/usr/share/games/fortunes}
loom="$build/loom"
mkdir -p "$out"
grep -m1 'model name' /proc/cpuinfo || true
grep -q avx512_bf16 /proc/cpuinfo && echo "AVX512-BF16: yes" || echo "AVX512-BF16: no (bf16 runs use oneDNN's emulation / rounded fp32)"

side=${LOOM_QUALITY_SIDE_BY_SIDE:-0}
# run NAME P ARGS...: `loom train` of model NAME at precision P into $out/NAME_P, its last line kept.
run() {
  name=$1 p=$2
  shift 2
  rm -rf "$out/${name}_$p"
  if [ "$side" = 1 ]; then
    OMP_NUM_THREADS=1 "$loom" train "$@" --out "$out/${name}_$p" --precision $p > "$out/${name}_$p.log" &
  else
    "$loom" train "$@" --out "$out/${name}_$p" --precision $p > "$out/${name}_$p.log"
  fi
}
for p in fp32 bf16; do
  run charlm $p --config configs/charlm.json --data "$data" --steps 1200 --lr 2e-3
done
wait
for p in fp32 bf16; do tail -1 "$out/charlm_$p.log"; done
for p in fp32 bf16; do
  "$loom" eval --checkpoint "$out/charlm_$p" --data "$data" > "$out/charlm_${p}_eval.txt"
  "$loom" eval --checkpoint "$out/charlm_$p" --data "$data" --precision bf16 > "$out/charlm_${p}_eval_bf16.txt"
done

cat > "$out/medium.json" <<'EOF'
{"wrapper": "TransformerWrapper", "num_tokens": 256, "max_seq_len": 256,
 "attn_layers": {"type": "Decoder", "dim": 256, "depth": 4, "heads": 4, "attn_dim_head": 64, "ff_mult": 4}}
EOF
for p in fp32 bf16; do
  run medium $p --config "$out/medium.json" --data "$data" --steps 200 --batch-size 8 --seq-len 256 --lr 1e-3 \
    --warmup 20 --eval-every 100 --log-every 10
done
wait
for p in fp32 bf16; do tail -1 "$out/medium_$p.log"; done

python3 - "$out" <<'EOF'
import json, math, re, sys
out = sys.argv[1]
def lines(path): return [json.loads(l) for l in open(path) if l.strip()]
def last_bpc(run): return [j["val_bpc"] for j in lines(f"{out}/{run}/metrics.jsonl") if "val_bpc" in j][-1]
def eval_bpc(name): return float(re.search(r"([0-9.]+) bits per character", open(f"{out}/{name}").read()).group(1))
ok = True
def report(what, value, limit):
    global ok
    good = value <= limit
    ok &= good
    print(f"{what}: {value:.4f} (target <= {limit}) {'PASS' if good else 'FAIL'}")
f, b = eval_bpc("charlm_fp32_eval.txt"), eval_bpc("charlm_bf16_eval.txt")
print(f"charlm held-out bpc, loom eval in fp32: fp32-trained {f:.4f}, bf16-trained {b:.4f}")
fb, bb = eval_bpc("charlm_fp32_eval_bf16.txt"), eval_bpc("charlm_bf16_eval_bf16.txt")
print(f"charlm held-out bpc, loom eval in bf16: fp32-trained {fb:.4f}, bf16-trained {bb:.4f}")
lf, lb = last_bpc("charlm_fp32"), last_bpc("charlm_bf16")
print(f"charlm held-out bpc at step 1200, each run's own evaluation: fp32 {lf:.4f}, bf16 {lb:.4f}")
report("charlm |bpc bf16 - fp32| (loom eval, fp32)", abs(b - f), 0.02)
report("charlm |bpc bf16 - fp32| (runs' own evaluation)", abs(lb - lf), 0.02)
ta = {j["step"]: j["loss"] for j in lines(f"{out}/medium_fp32/metrics.jsonl") if "loss" in j}
tb = {j["step"]: j["loss"] for j in lines(f"{out}/medium_bf16/metrics.jsonl") if "loss" in j}
rel = [abs(tb[s] - ta[s]) / ta[s] for s in sorted(ta)]
worst = max(range(len(rel)), key=lambda i: rel[i])
print("medium loss fp32 / bf16 at steps", ", ".join(f"{s}: {ta[s]:.4f}/{tb[s]:.4f}" for s in sorted(ta)[::4]))
print(f"medium: mean relative difference {sum(rel) / len(rel) * 100:.3f} %, largest at step {sorted(ta)[worst]}")
report("medium largest relative loss difference over 200 steps (%)", rel[worst] * 100, 1.0)
sys.exit(0 if ok else 1)
EOF
