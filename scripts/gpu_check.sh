#!/usr/bin/env bash
# The GPU checks of this project, in one prepared call per phase (see docs/benchmarks.md "Training speed" and
# docs/pretraining.md "Ablation" for what they measured). Usage, from the repository root:
#
#   bash scripts/gpu_check.sh speed      # = tests step profile loop: CUDA tests, step benchmark (fp32 vs bf16,
#                                        #   layouts), profile, loop benchmark
#   bash scripts/gpu_check.sh evidence   # motion benchmark at 128 px, ablation cells at 112 px
#   bash scripts/gpu_check.sh launch     # one process vs --multiprocessing-distributed vs torchrun on the demo
#
# Every phase runs under its own time limit; the output goes to the terminal and to OUT/log.txt
# (OUT defaults to runs/gpu_check). MINUTES (default 2) is the pretraining budget of an ablation cell;
# LAYOUT (default both) the memory layouts of the step benchmark.
# TINY=1 shrinks every size so that the whole script can be tried on a CPU first.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-runs/gpu_check}
WORK=${WORK:-$OUT}  # where the benchmark's videos and the ablation cells go (OUT gets the log and the summaries)
MINUTES=${MINUTES:-2}
WORKERS=${WORKERS:-$(( $(nproc) > 4 ? $(nproc) - 2 : 2 ))}
mkdir -p "$OUT"
LOG="$OUT/log.txt"

phase() {  # phase NAME SECONDS COMMAND...: run COMMAND under a time limit, logging its output
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
    local tic=$SECONDS
    timeout "$limit" "$@" 2>&1 | grep --line-buffered -v "it/s\]\|s/it\]" | tee -a "$LOG"
    echo "=== $name: status ${PIPESTATUS[0]}, $(( SECONDS - tic )) s" | tee -a "$LOG"
}

if [ "${TINY:-0}" = 1 ]; then
    DATA=(--size 48 --n_pretrain 32 --n_train 16 --n_test 16)
    CELL=(--seq 8 --img_dim 32 --train_batch 8 --cluster 8 --queue_size 32 --split 2 --queue_start 1
          --probe_epochs 2 --order_epochs 1)
    LOOP=(--steps 3)
else
    DATA=(--size 128 --n_pretrain 1200 --n_train 904 --n_test 296)
    CELL=(--seq 16 --img_dim 112 --train_batch 64 --cluster 64 --queue_size 256 --split 10 --queue_start 5
          --probe_epochs 100 --order_epochs 3)
    LOOP=(--steps 30)
fi

header() {
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$LOG"
    nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,clocks.sm --format=csv 2>&1 | tee -a "$LOG"
}

header
phases=()
for what in "$@"; do
    if [ "$what" = speed ]; then phases+=(tests step profile loop); else phases+=("$what"); fi
done
for what in "${phases[@]}"; do
    case $what in
    tests)
        phase tests 120 python3 -m pytest -q -p no:cacheprovider tests/test_device.py tests/test_mfo.py
        ;;
    step)
        phase step 300 python3 scripts/bench_train.py --repeats 5 --layout "${LAYOUT:-both}"
        ;;
    profile)
        phase profile 120 python3 scripts/bench_train.py --profile
        ;;
    loop)
        phase loop 180 python3 scripts/bench_train.py --loop "${LOOP[@]}"
        ;;
    evidence)
        phase data 120 python3 scripts/make_demo_data.py --kind motion --out "$WORK/data" "${DATA[@]}" --workers "$WORKERS"
        MONITOR="--monitor_train_csv $WORK/data/train.csv --monitor_test_csv $WORK/data/test.csv --monitor_every 2"
        # random init and full MFO with the small-data recipe of docs/pretraining.md, then full MFO with the
        # paper's augmentations; the monitor (probe, kNN, rank) runs at step 0 and every 2 epochs of each pretraining
        phase recipe 600 python3 scripts/ablation.py --out "$WORK/recipe" --data "$WORK/data" --variants random full \
            --seeds 1 "${CELL[@]}" --minutes "$MINUTES" --epoch 100 --workers "$WORKERS" \
            --train_args="--amp $MONITOR --jitter 0 0 0 0 --gray_p 0 --flip_p 0"
        phase paper_aug 600 python3 scripts/ablation.py --out "$WORK/paper_aug" --data "$WORK/data" --variants full \
            --seeds 1 "${CELL[@]}" --minutes "$MINUTES" --epoch 100 --workers "$WORKERS" \
            --train_args="--amp $MONITOR"
        for run in recipe paper_aug; do
            cp "$WORK/$run/ablation.md" "$OUT/${run}_ablation.md" 2>/dev/null
            cp "$WORK/$run/cells/full_s0/pretrain/log.jsonl" "$OUT/${run}_log.jsonl" 2>/dev/null
        done
        ;;
    launch)
        phase launch 300 python3 scripts/bench_train.py --launch --repeats 1 --workers 4
        ;;
    *)
        echo "unknown phase $what (speed = tests step profile loop; evidence; launch)" >&2
        exit 2
        ;;
    esac
done
