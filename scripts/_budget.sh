# Shared set-up and helpers of the prepared GPU scripts, sourced from the repository root (the caller
# sets BUDGET, in seconds, afterwards). Sets REPO, OUT (default ./gpu_out, created, status.txt emptied),
# PYTHONPATH, PY, DRY (KACNUM_GPU_CHECK_DRYRUN: 1 = rehearse on the CPU) and START.
REPO=$(pwd)
OUT=${OUT:-$REPO/gpu_out}
mkdir -p "$OUT"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-$(command -v python || command -v python3)}
DRY=${KACNUM_GPU_CHECK_DRYRUN:-0}
START=$(date +%s)
: > "$OUT/status.txt"

# seconds left of the overall budget
left() { echo $(( BUDGET - ($(date +%s) - START) )); }

# run_part NAME LIMIT_S RESERVE_S CMD...: run CMD under timeout min(LIMIT, time left - RESERVE - 5),
# its output to the terminal and $OUT/NAME.log, its exit code and seconds to $OUT/status.txt
run_part() {
    local name=$1 limit=$2 reserve=$3; shift 3
    local rem; rem=$(( $(left) - reserve - 5 ))
    if [ "$rem" -lt 10 ]; then
        echo "$name skipped (budget spent)" | tee -a "$OUT/status.txt"; return 0
    fi
    [ "$limit" -gt "$rem" ] && limit=$rem
    echo "=== $name (limit ${limit}s, $(left)s left) ==="
    local t0; t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" > >(tee "$OUT/$name.log") 2>&1
    local rc=$?
    echo "$name rc=$rc seconds=$(( $(date +%s) - t0 ))" | tee -a "$OUT/status.txt"
    return 0
}
