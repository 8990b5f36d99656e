# Shared helpers of the prepared GPU scripts (sourced; needs BUDGET, START and OUT set by the caller).

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
