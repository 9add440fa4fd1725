#!/usr/bin/env bash
# The form experiment of docs/form.md, rerun with one command: the same budget for every variant (STEPS
# optimizer steps of 4 crops x 2,048 tokens = 8,192 tokens a step), each started from the shipped model
# (train.init_from), on crops four times the shipped model's 512 tokens, so that repeats of 4-16 bars fall
# inside a crop. Variants: `long` = the default architecture; `local` = + the 1,024-token softmax window
# (conf/model/spe_sine_gated_decay_local.yaml). Resumable (train.resume=auto): run it again after a stop.
# Then measure each with benchmarks/form.py --recall --checkpoint OUT/<variant>/best.pt.
#   usage: [OUT=/work/runs/form] [STEPS=300] [THREADS=1] bash benchmarks/form_experiment.sh   (docs/form.md: 300)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/work/runs/form}
STEPS=${STEPS:-300}
THREADS=${THREADS:-1}
DATA=${MUSICGEN_SHARED_DATA:-../shared/data}/pop909
export WANDB_MODE=${WANDB_MODE:-disabled} OMP_NUM_THREADS=$THREADS
PY=${PY:-.venv/bin/python}
run() {  # name, model preset
  $PY train.py model="$2" data.root="$DATA" logger=none seed=0 \
    train.seq_len=2048 train.batch_size=4 train.max_steps="$STEPS" train.lr=3e-4 train.warmup_steps=50 \
    train.val_every=100 train.val_batches=8 train.val_length_factor=0 train.ckpt_every=50 \
    train.init_from=checkpoints/musicgen-small.pt train.resume=auto train.ckpt_dir="$OUT/$1" \
    hydra.run.dir="$OUT/$1/hydra" > "$OUT/$1.log" 2>&1
}
mkdir -p "$OUT"
run long spe_sine_gated_decay &
run local spe_sine_gated_decay_local &
wait
