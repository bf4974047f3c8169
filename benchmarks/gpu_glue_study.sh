#!/usr/bin/env bash
# The GLUE study (issue "the method, shown") on a GPU machine that reaches nothing, as one device command:
#   0. packages the image lacks (.gpu/whl) and ../shared rebuilt from .gpu (benchmarks/gpu_pack.py);
#   1. the sparse starting points: upstream pruning of all-MiniLM-L6-v2 to 80% and 90% at 3x the recipe's length
#      (benchmarks/upstream_minilm.py --budget full-3x), and the 90% recipe's levers at that length (layer-wise
#      sparsity, AC/DC, RigL, GLUE's training sentences as extra text: --study levers), all at once;
#   2. the study's arms (benchmarks/glue_study.py) in SHARDS parallel processes on the one GPU, round-robin over
#      tasks x starting points x arms (RTE and CoLA first, SST-2 last); results in benchmarks/results/glue_study_gpu/;
#   3. everything small that a later session needs, in $OUT/study.tgz: the arms' summaries and dev predictions,
#      every finished run's results.json (carry them back as runs/glue_study_gpu and those runs are skipped), the
#      upstream summaries, logs.
# Every phase stops at its share of DEADLINE_SECONDS; what finished is kept.
#
# Here, once:   python benchmarks/gpu_pack.py pack
# Device call:  run(command="bash benchmarks/gpu_glue_study.sh 520", carry=[".gpu"], timeout_s=600)
#               (add "runs/glue_study_gpu" to carry to continue an earlier call's runs)
# Environment: PYTHON (python3), SHARDS (12), GPU_ARMS ("paper dense_transfer extended paper_mean"),
#              GPU_TASKS ("rte cola sst2"), SST2_TRAIN (unset: the whole training set), UPSTREAM_BUDGET (full-3x),
#              UPSTREAM_SPARSITIES ("90 80"; empty: none), UPSTREAM_LEVERS ("uniform acdc rigl gluetext"; empty: none),
#              GLUE_EXTRA (flags for every GLUE run), GLUE_STUDY_RESULTS.
# A CPU smoke test of the whole script (minutes):
#   UPSTREAM_SPARSITIES= UPSTREAM_LEVERS= SHARDS=2 GPU_TASKS=rte GPU_ARMS="dense_transfer_single paper_single" \
#   OUT=/tmp/gpu_smoke GLUE_EXTRA="--max_train_samples 48 --max_eval_samples 32 --epochs 2" \
#   GLUE_STUDY_RESULTS=/tmp/gpu_smoke/results PYTHON=.venv/bin/python bash benchmarks/gpu_glue_study.sh 600
set -u
DEADLINE=$((SECONDS + ${1:-520}))
PY=${PYTHON:-python3}
SHARDS=${SHARDS:-12}
OUT=${OUT:-runs/gpu_out}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export GLUE_STUDY_RESULTS=${GLUE_STUDY_RESULTS:-benchmarks/results/glue_study_gpu}
cd "$(dirname "$0")/.."
left() { echo $((DEADLINE - SECONDS)); }
mkdir -p runs "$OUT"

if [ -d .gpu/whl ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
fi
[ -e ../shared ] || $PY benchmarks/gpu_pack.py unpack || exit 2
nvidia-smi -L 2>/dev/null
$PY -c "import torch, transformers, datasets, peft, accelerate, pyarrow; print('torch', torch.__version__, 'transformers', transformers.__version__, 'datasets', datasets.__version__, 'peft', peft.__version__, 'pyarrow', pyarrow.__version__, 'cuda', torch.cuda.is_available())" || exit 2

echo "== 1. upstream 80% and 90% (${UPSTREAM_BUDGET:-full-3x}), $(left) s left"
for s in ${UPSTREAM_SPARSITIES-90 80}; do
    timeout $(( $(left) * 2 / 5 )) $PY benchmarks/upstream_minilm.py --study sparsity --sparsities $s \
        --budget "${UPSTREAM_BUDGET:-full-3x}" --need-model > runs/gpu_upstream_$s.log 2>&1 &
done
# The upstream levers at the same length (one change of the 90% recipe each), beside the runs above; their
# models are not starting points, so the arms below do not wait for anything but the 80% and 90% runs.
for lever in ${UPSTREAM_LEVERS-uniform acdc rigl gluetext}; do
    timeout $(( $(left) * 2 / 5 )) $PY benchmarks/upstream_minilm.py --study levers --levers $lever \
        --budget "${UPSTREAM_BUDGET:-full-3x}" > runs/gpu_upstream_$lever.log 2>&1 &
done
wait
grep -h "\[done\]\|Error" runs/gpu_upstream_*.log | cut -c1-300
MODELS="dense=../shared/models/all-MiniLM-L6-v2"
for s in 90 80; do
    d=runs/upstream/bench/minilm_${s}_${UPSTREAM_BUDGET:-full-3x}
    [ -f "$d/model.safetensors" ] && MODELS="$s=$d $MODELS"
done
echo "starting points: $MODELS"

echo "== 2. GLUE arms in $SHARDS shards, $(left) s left"
SST2=${SST2_TRAIN:+--sst2-train-samples $SST2_TRAIN}
for k in $(seq 0 $((SHARDS - 1))); do
    timeout $(( $(left) - 25 )) $PY benchmarks/glue_study.py --data-dir ../shared/data/glue --models $MODELS \
        --tasks ${GPU_TASKS:-rte cola sst2} --arms ${GPU_ARMS:-paper dense_transfer extended paper_mean} \
        --runs runs/glue_study_gpu --threads 1 --shard "$k/$SHARDS" $SST2 --glue-args "${GLUE_EXTRA:-}" \
        > runs/gpu_glue_$k.log 2>&1 &
done
wait
grep -h "\[done\]\|Error" runs/gpu_glue_*.log | cut -c1-300

echo "== 3. pack, $(left) s left"
$PY benchmarks/glue_study.py --table 2>/dev/null | head -80
find runs/glue_study_gpu -name results.json -o -name grid_results.json -o -name recipe.yaml > runs/gpu_files.txt 2>/dev/null
tar czf "$OUT/study.tgz" "$GLUE_STUDY_RESULTS" "$GLUE_STUDY_RESULTS"_predictions benchmarks/results/upstream \
    "$GLUE_STUDY_RESULTS"_*.png \
    -T runs/gpu_files.txt runs/gpu_*.log 2>/dev/null
ls -la "$OUT"
