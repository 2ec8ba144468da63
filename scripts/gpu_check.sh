#!/usr/bin/env bash
# The GPU checks of this project, in one prepared call per phase (see docs/benchmarks.md "Training speed" and
# "Input pipeline speed", and docs/pretraining.md "Ablation", for what they measured). Usage, from the repository root:
#
#   bash scripts/gpu_check.sh speed      # = tests step profile loop: CUDA tests, step benchmark (fp32 vs bf16,
#                                        #   layouts), profile, loop benchmark
#   bash scripts/gpu_check.sh evidence   # = recipe paper_aug: the motion benchmark at 128 px (built once), then
#                                        #   random init and full MFO with the small-data recipe (recipe), full MFO
#                                        #   with the paper's augmentations (paper_aug), at 112 px, batch 64, bf16,
#                                        #   MINUTES of pretraining a cell; after each, one table of the cells
#                                        #   (scripts/evidence_summary.py): steps trained, probe_lr, SGD probe, kNN,
#                                        #   erank, the monitor's probe and kNN at step 0 and at the end
#   bash scripts/gpu_check.sh input      # train.py --amp at the paper's configuration, 40 steps on 320x240 JPEG
#                                        #   folders, 456x256 H.264 videos (keyframe every 2 s) and their frames at
#                                        #   --short_side 128, with 6 and 14 loader workers, against the bare step
#                                        #   (scripts/input_check.py)
#   bash scripts/gpu_check.sh precision  # fp32, bf16 and bf16 + --compile, full step and backbone, in one run; the
#                                        #   bf16 step's five largest kernels (scripts/bench_train.py --kernels 5)
#   bash scripts/gpu_check.sh launch     # one process vs --multiprocessing-distributed vs torchrun on the demo
#
# Phases run in the order given (an unknown name stops the script before any runs): `bash scripts/gpu_check.sh
# evidence input precision` is the whole of issue 26. Every phase runs under its own time limit; the output goes to
# the terminal and to OUT/log.txt, each phase's also to OUT/phase_NAME.txt, and the summaries (OUT/evidence.md,
# OUT/input_check.txt, the precision lines) are printed again at the end. OUT (default: WORK) gets only these small
# files: on a machine that copies a folder back, point OUT there; WORK (default runs/gpu_check) gets the data, the
# ablation cells and the runs, and a later call with the same WORK reuses them (the benchmark, finished cells).
# MINUTES (default 2) is the pretraining budget of an ablation cell; LAYOUT (default both) the memory layouts of
# the step benchmark; WORKERS (default: cores - 2) the loader workers of the evidence phases and the processes
# that build the input phase's data.
# Time on one H100/H200 with 16 cores, estimated (no figure of these phases exists yet): recipe about
# 2.5 + MINUTES min (data 0.5; scoring about 1 a cell, random init's included), paper_aug about 1 + MINUTES
# (train.py's start-up and first epoch take about 1.5 of a cell's MINUTES), input about 3.5, precision about 2.5:
# in all about 9.5 + 2 x MINUTES min, 13.5 at MINUTES=2. The limits below cap each phase: recipe 6 + MINUTES
# min with its data and summary, paper_aug 4.5 + MINUTES, input 5, precision 4.
# TINY=1 shrinks every size, and stretches every limit 4x, so that the whole script can be tried on a CPU first.
set -u
export PYTHONUNBUFFERED=1
WORK=${WORK:-runs/gpu_check}  # the benchmark's videos, the ablation cells, the input runs
OUT=${OUT:-$WORK}              # the log and the summaries
MINUTES=${MINUTES:-2}
WORKERS=${WORKERS:-$(( $(nproc) > 4 ? $(nproc) - 2 : 2 ))}
phases=()
for what in "$@"; do
    case $what in
    speed) phases+=(tests step profile loop) ;;
    evidence) phases+=(recipe paper_aug) ;;
    tests|step|profile|loop|recipe|paper_aug|input|precision|launch) phases+=("$what") ;;
    *)  # before any phase runs: a typo costs no device time
        echo "unknown phase $what (speed = tests step profile loop; evidence = recipe paper_aug; input; precision;" \
             "launch)" >&2
        exit 2
        ;;
    esac
done
mkdir -p "$OUT"
LOG="$OUT/log.txt"

phase() {  # phase NAME SECONDS COMMAND...: run COMMAND under a time limit (x SLACK), logging its output
    local name=$1 limit=$(( $2 * SLACK ))
    shift 2
    echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
    : > "$OUT/phase_$name.txt"
    local tic=$SECONDS
    timeout "$limit" "$@" 2>&1 | grep --line-buffered -v "it/s\]\|s/it\]" | tee -a "$LOG" "$OUT/phase_$name.txt"
    echo "=== $name: status ${PIPESTATUS[0]}, $(( SECONDS - tic )) s" | tee -a "$LOG"
}

if [ "${TINY:-0}" = 1 ]; then
    DATA=(--size 48 --n_pretrain 8 --n_train 16 --n_test 16)  # an epoch of one step
    CELL=(--seq 8 --img_dim 32 --train_batch 8 --cluster 8 --queue_size 32 --split 2 --queue_start 1
          --probe_epochs 2 --order_epochs 1)
    MONITOR_EVERY=1  # a CPU cell trains an epoch or two: a monitor run at its end too
    LOOP=(--steps 3)
    INPUT=(--train_batch 2 --seq 8 --img_dim 32 --steps 4 --log_every 2 --bare_steps 2 --videos 2 --frames 40
           --video_frames 60 --workers 1 2 --build_workers 2)
    REPEATS=2
    SLACK=4  # the limits are sized for a GPU machine; a shared CPU runs the toy sizes slower than that
else
    DATA=(--size 128 --n_pretrain 1200 --n_train 904 --n_test 296)
    CELL=(--seq 16 --img_dim 112 --train_batch 64 --cluster 64 --queue_size 256 --split 10 --queue_start 5
          --probe_epochs 100 --order_epochs 3)
    MONITOR_EVERY=2
    LOOP=(--steps 30)
    INPUT=(--steps 40 --workers 6 14 --build_workers "$WORKERS")
    REPEATS=5
    SLACK=1
fi
CELL_S=$(python3 -c "print(round(60 * $MINUTES))")  # a cell's pretraining budget in seconds

header() {
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$LOG"
    nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,clocks.sm --format=csv 2>&1 | tee -a "$LOG"
}

header
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
    recipe|paper_aug)
        # the motion benchmark (a no-op once it is there); random init and full MFO with the small-data
        # recipe of docs/pretraining.md (recipe), or full MFO with the paper's augmentations (paper_aug); the monitor (probe, kNN, rank)
        # runs at step 0 and every MONITOR_EVERY epochs of each pretraining
        phase data 90 python3 scripts/make_demo_data.py --kind motion --out "$WORK/data" "${DATA[@]}" --workers "$WORKERS"
        MONITOR="--monitor_train_csv $WORK/data/train.csv --monitor_test_csv $WORK/data/test.csv"
        MONITOR="$MONITOR --monitor_every $MONITOR_EVERY"
        if [ "$what" = recipe ]; then
            phase recipe $(( CELL_S + 240 )) python3 scripts/ablation.py --out "$WORK/recipe" --data "$WORK/data" \
                --variants random full --seeds 1 "${CELL[@]}" --minutes "$MINUTES" --epoch 100 --workers "$WORKERS" \
                --train_args="--amp $MONITOR --jitter 0 0 0 0 --gray_p 0 --flip_p 0"
        else
            phase paper_aug $(( CELL_S + 150 )) python3 scripts/ablation.py --out "$WORK/paper_aug" --data "$WORK/data" \
                --variants full --seeds 1 "${CELL[@]}" --minutes "$MINUTES" --epoch 100 --workers "$WORKERS" \
                --train_args="--amp $MONITOR"
        fi
        cp "$WORK/$what/ablation.md" "$OUT/${what}_ablation.md" 2>/dev/null
        cp "$WORK/$what/cells/full_s0/pretrain/log.jsonl" "$OUT/${what}_log.jsonl" 2>/dev/null
        # both grids, whichever exist: the table grows as they finish
        phase evidence_summary 30 python3 scripts/evidence_summary.py "$WORK/recipe" "$WORK/paper_aug" \
            --out "$OUT/evidence.md"
        ;;
    input)
        phase input 300 python3 scripts/input_check.py --out "$WORK/input" "${INPUT[@]}"
        cp "$WORK/input/input_check.txt" "$WORK/input/input_check.json" "$OUT/" 2>/dev/null
        ;;
    precision)
        phase precision 240 python3 scripts/bench_train.py --layout channels_last --compile --compile_precisions bf16 \
            --kernels 5 --repeats "$REPEATS"
        ;;
    launch)
        phase launch 300 python3 scripts/bench_train.py --launch --repeats 1 --workers 4
        ;;
    esac
done

# the summaries again, last: a terminal (or a tool) that keeps only the end of the output still has them
echo "=== summaries" | tee -a "$LOG"
shown=
for what in "${phases[@]}"; do
    case $what in
    recipe|paper_aug)
        [ -n "$shown" ] && continue
        shown=1
        cat "$OUT/evidence.md" 2>/dev/null || echo "evidence: no summary (see the phases above)"
        ;;
    input) cat "$OUT/input_check.txt" 2>/dev/null || echo "input: no summary (see the phase above)" ;;
    precision) grep -iv "warn\|^USDT\|gpuGetDeviceCount" "$OUT/phase_precision.txt" 2>/dev/null ;;
    esac
done | tee -a "$LOG"
