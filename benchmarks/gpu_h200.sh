#!/usr/bin/env bash
# One short GPU session for the fla backend (docs/gpu.md): install the `gpu` extra and musicgen's own deps from
# .whl/, run the CUDA tests, then the benchmarks, and copy logs + JSON rows into $OUT. Sized for ~8 minutes on
# one H200 (each stage has its own time cap, so one slow stage cannot starve the others; the training rows are
# rewritten after every row, so a cut-short stage still leaves what it measured).
#
#   run(command="bash benchmarks/gpu_h200.sh", carry=[".whl"], timeout_s=600)
#
# Needs .whl/ filled beforehand (docs/gpu.md, "Wheels"). musicgen itself is used from the source tree (PYTHONPATH).
set -u -o pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT" benchmarks/results
log="$OUT/run.log"
exec > >(tee -a "$log") 2>&1
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled MUSICGEN_SHARED_DATA=${MUSICGEN_SHARED_DATA:-/tmp/none}
t0=$SECONDS
stage() { echo; echo "=== [$((SECONDS - t0)) s] $*"; }

stage "install .whl/ (fla-core, omegaconf, hydra-core, antlr4, miditoolkit, mido, pretty_midi)"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD"
python3 - <<'EOF' | tee "$OUT/env.txt"
import importlib.metadata as md, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
for name in ("fla-core", "triton", "einops", "omegaconf"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "MISSING")
from musicgen.model.ops.linear_attention import fla_available
print("fla importable:", fla_available())
EOF

stage "CUDA tests: fla parity (real kernels), CUDA graphs, the model on CUDA"
timeout 170 python3 -m pytest -q -p no:cacheprovider tests/test_fla_backend.py tests/test_model_cuda.py \
    -o addopts="" -rs --durations=8 > "$OUT/tests.log" 2>&1
echo "pytest exit $?"; tail -25 "$OUT/tests.log"

SPE=spe_sine_gated_decay                          # the shipped architecture: gated SineSPE + elu + learned decay
FLA="$SPE+attention.backend=fla"
NOPE="$SPE+attention.backend=fla+pe.kind=none"    # the same model without positional encoding
stage "training throughput, bf16 autocast, 8192 tokens per step (L=32768: one sequence of 32768)"
timeout 230 python3 -m benchmarks.train_throughput --device cuda --dtype bf16 --lengths 2048 8192 32768 \
    --tokens 8192 --warmup 2 --repeats 3 --timeout 75 \
    --models softmax "$FLA" "$NOPE" "$SPE" \
    --ratio "$FLA" softmax --ratio "$NOPE" "$FLA" --ratio "$FLA" "$SPE" \
    --out benchmarks/results/train_throughput_h200_bf16_fla.json
cp benchmarks/results/train_throughput_h200_bf16_fla.json "$OUT/" 2>/dev/null

stage "generation step (model.step), eager vs CUDA graph, batch 1 and 64, positions 1k..64k"
timeout 100 python3 -m benchmarks.step --device cuda --threads 16 --models "$SPE" --positions 1024 4096 16384 65536 \
    --batch 1 64 --graphs both --steps 100 --warmup 10 --out benchmarks/results/step_h200_graphs.json
cp benchmarks/results/step_h200_graphs.json "$OUT/" 2>/dev/null

stage "whole generation loop (GenerationSession: grammar, sampling) on CUDA with graphs, shipped checkpoint"
timeout 60 python3 -m benchmarks.generate --device cuda --graphs --no-softmax --batch 1 64 --positions 1000 16000 \
    --window 100 --warmup 10 --out benchmarks/results/generate_h200_graphs.json
cp benchmarks/results/generate_h200_graphs.json "$OUT/" 2>/dev/null

stage "done"
ls -la "$OUT"
