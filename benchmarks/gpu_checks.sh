#!/usr/bin/env bash
# The GPU half of the vision benchmarks, for a machine with one CUDA GPU and many CPU cores:
#   1. training-step time of every mask method vs dense (ResNet-50, 224 px, batch 32, bf16 + channels_last);
#   1b. masked LoRA vs plain LoRA vs full sparse fine-tuning: step time and peak memory (MiniLM, 32 x 128 tokens);
#   2. the CIFAR-10 study at 64 px (benchmarks/vision_cifar_study.py --size 64), its runs in parallel shards;
#   3. if time is left, the same study on the whole CIFAR-10 train/test sets (cache name vision_cifar_64px_full).
# Every finished study run is cached as JSON (benchmarks/results/vision_cifar_64px*/); a phase cut short by its
# time limit loses only its unfinished runs, and a rerun does only what is missing.
#
#   benchmarks/gpu_checks.sh PATH/TO/cifar10_jpeg.zip [DEADLINE_SECONDS]
#
# Environment: PYTHON (default python3), SHARDS (parallel study processes, default 9), STEP_TIME_STEPS (200),
# STUDY_EXTRA (extra study flags, e.g. for a smoke test).
set -u
ZIP=${1:?usage: benchmarks/gpu_checks.sh CIFAR_ZIP [DEADLINE_SECONDS]}
DEADLINE=$((SECONDS + ${2:-480}))
PY=${PYTHON:-python3}
SHARDS=${SHARDS:-9}
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
[ -f "$ZIP" ] || { echo "no CIFAR-10 zip at $ZIP" >&2; exit 2; }
left() { echo $((DEADLINE - SECONDS)); }

nvidia-smi -L 2>/dev/null || echo "(no nvidia-smi)"
$PY -c "import torch, timm, accelerate; print('torch', torch.__version__, 'timm', timm.__version__, 'accelerate', accelerate.__version__, 'cuda', torch.cuda.is_available())"

echo "== 1. step time ($(left) s left)"
DEVICE=$($PY -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
timeout $(( $(left) / 4 )) $PY benchmarks/vision_step_time.py --device "$DEVICE" --steps "${STEP_TIME_STEPS:-200}" ${STEP_TIME_EXTRA:-} \
    || echo "step time: exit $?"

study() {  # study NAME TIME_LIMIT FLAGS...: SHARDS processes, each every SHARDS-th run
    local name=$1 limit=$2; shift 2
    echo "== $name ($limit s of $(left) s left)"
    for k in $(seq 0 $((SHARDS - 1))); do
        timeout "$limit" $PY benchmarks/vision_cifar_study.py --data "$ZIP" --size 64 --cache_name "$name" \
            --shard "$k/$SHARDS" --no_progress --threads 1 ${STUDY_EXTRA:-} "$@" > "runs/gpu_checks_${name}_$k.log" 2>&1 &
    done
    wait
    grep -h "top-1\|Error\|error" runs/gpu_checks_${name}_*.log | head -40
    ls "benchmarks/results/$name" 2>/dev/null | wc -l | xargs echo "runs cached in benchmarks/results/$name:"
}
echo "== 1b. sparse LoRA step time and memory vs plain LoRA and full fine-tuning ($(left) s left)"
# Needs a sparse MiniLM; any sparse BERT-family folder works (SPARSE_MINILM), else the dense one from ../shared.
LORA_MODEL=${SPARSE_MINILM:-runs/upstream/bench/minilm_80_cpu-long}
[ -d "$LORA_MODEL" ] || LORA_MODEL=../shared/models/all-MiniLM-L6-v2
timeout $(( $(left) / 6 )) $PY benchmarks/sparse_lora.py --model "$LORA_MODEL" --data-dir ../shared/data/glue \
    --timing-only --device "$DEVICE" --timing-rounds 50 || echo "sparse lora timing: exit $?"

mkdir -p runs
study vision_cifar_64px $(( $(left) * 2 / 3 ))
[ "$(left)" -gt 60 ] && study vision_cifar_64px_full $(( $(left) - 15 )) --train_samples 50000 --eval_samples 10000
echo "== done ($(left) s left)"
