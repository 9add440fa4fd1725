#!/usr/bin/env bash
# The form experiment of docs/form.md, rerun with one command. Every variant starts from the shipped model
# (train.init_from) and is resumable (train.resume=auto): run it again after a stop.
#   long   = the default architecture on 2,048-token crops (four times the shipped model's 512), so that repeats
#            of 4-16 bars fall inside a crop; STEPS optimizer steps of 4 crops (8,192 tokens a step)
#   local  = + the 1,024-token softmax window (conf/model/spe_sine_gated_decay_local.yaml), same budget
#   recall = + a recall head scoring by content alone (conf/model/spe_sine_gated_decay_recall.yaml with
#            model.recall.bar_clock=false), which alone trains (train.train_only=[recall], the rest frozen,
#            dropout off) on 4,096-token crops: RECALL_STEPS steps of 2 crops (8,192 tokens a step)
#   clock  = the same with the head's bar clock (the preset as it is), same budget
# Then measure each with python -m benchmarks.form --recall --checkpoint OUT/<variant>/last.pt.
#   usage: [OUT=/work/runs/form] [VARIANTS="long local recall clock"] [STEPS=300] [RECALL_STEPS=600] [THREADS=1]
#          bash benchmarks/form_experiment.sh          (docs/form.md: STEPS=300, RECALL_STEPS=600)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/work/runs/form}
VARIANTS=${VARIANTS:-long local recall clock}
STEPS=${STEPS:-300}
RECALL_STEPS=${RECALL_STEPS:-600}
THREADS=${THREADS:-1}
DATA=${MUSICGEN_SHARED_DATA:-../shared/data}/pop909
export WANDB_MODE=${WANDB_MODE:-disabled} OMP_NUM_THREADS=$THREADS
PY=${PY:-.venv/bin/python}
run() {  # name, model preset, extra overrides...
  local name=$1 preset=$2
  shift 2
  $PY train.py model="$preset" data.root="$DATA" logger=none seed=0 \
    train.val_every=100 train.val_batches=8 train.val_length_factor=0 train.ckpt_every=50 \
    train.init_from=checkpoints/musicgen-small.pt train.resume=auto train.ckpt_dir="$OUT/$name" \
    hydra.run.dir="$OUT/$name/hydra" "$@" > "$OUT/$name.log" 2>&1
}
head=(model.dropout=0.0 "train.train_only=[recall]" train.seq_len=4096 train.batch_size=2
      train.max_steps="$RECALL_STEPS" train.lr=1e-3 train.warmup_steps=30)
common=(train.seq_len=2048 train.batch_size=4 train.max_steps="$STEPS" train.lr=3e-4 train.warmup_steps=50)
mkdir -p "$OUT"
for variant in $VARIANTS; do
  case $variant in
    long) run long spe_sine_gated_decay "${common[@]}" & ;;
    local) run local spe_sine_gated_decay_local "${common[@]}" & ;;
    recall) run recall spe_sine_gated_decay_recall model.recall.bar_clock=false "${head[@]}" & ;;
    clock) run clock spe_sine_gated_decay_recall "${head[@]}" & ;;
    *) echo "error: unknown variant '$variant' (long, local, recall, clock)" >&2; exit 2 ;;
  esac
done
wait
