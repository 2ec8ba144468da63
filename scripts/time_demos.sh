#!/bin/bash
# The demo path, timed: each demo's wall time in a new empty folder (removed at the end), then what it left on disk.
# Usage: bash scripts/time_demos.sh [PYTHON]   (default: the checkout's .venv/bin/python). docs/evaluation.md has
# the figures it gave; run it on cores nothing else uses.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${1:-$ROOT/.venv/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
failed=0
timed() {  # timed LABEL SCRIPT [FLAGS...]: one table row; the command's output goes to WORK/LABEL.log
    local label=$1 script=$2; shift 2
    local tic rc
    tic=$(date +%s.%N)
    "$PYTHON" "$ROOT/$script" "$@" > "$label.log" 2>&1; rc=$?
    printf '| %-52s | %6.1f s | %s |\n' "$script $*" "$(echo "$(date +%s.%N) - $tic" | bc)" \
        "$([ $rc = 0 ] && echo ok || echo "status $rc: $(tail -n 1 "$label.log")")"
    [ $rc = 0 ] || failed=1
}
echo "| command | wall time | result |"
echo "|---|---|---|"
timed pretrain train.py --demo
timed again train.py --demo
timed linear eval_linear.py --demo
timed retrieval eval_linear.py --demo --retrieval
timed finetune finetune.py --demo
timed cam visualization/temporal_cam.py --demo
echo
du -sh runs/* data/demo
grep -h "^the monitor" pretrain.log
exit $failed
