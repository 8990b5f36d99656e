#!/usr/bin/env bash
# The DistillKac image pipeline on one GPU at reduced length, within a time budget.
#
#   bash scripts/gpu_pipeline.sh                          # results under $OUT (default ./gpu_out)
#   KACNUM_GPU_CHECK_DRYRUN=1 bash scripts/gpu_pipeline.sh   # every part tiny, on the CPU (rehearsal)
#
# `experiments/cifar_distill.py --preset gpu` (the paper's 38.3M-parameter CIFAR-10 UNet, bf16 autocast,
# batch 128) run stage by stage with --resume, each stage under `timeout` inside one overall budget
# (GPU_PIPELINE_BUDGET seconds, default 500), keeping EVAL_RESERVE seconds for the eval stage so that a
# table comes out even when a training stage is cut short:
#   bench      steady-state train throughput and peak memory (bench_train.py)  -> bench_train.json
#   teacher    Kac flow teacher, TEACHER_STEPS steps                            -> teacher.log
#   sample     guided AB-2 teacher samples (100 steps) and the undistilled few-step teacher
#   distill    staged endpoint distillation 100 -> 20 -> 4 -> 2 -> 1, DISTILL_STEPS per stage
#   baselines  Gaussian FM (Euler, AB-2), VP-DDIM and progressive distillation, TEACHER_STEPS each
#   eval       FID table (Inception on CIFAR-10; the classifier features on synthetic data)
# CIFAR-10 is used when found under $KACNUM_DATA, else SYNTHETIC CIFAR-shaped class-conditioned images
# (--dataset synthetic): then the FIDs only show that the table is produced, not image quality.
# $OUT gets status.txt, results.md, summary.json (per stage: wall seconds, peak CUDA memory, throughput;
# results.json) and gpu_pipeline.tar.gz (the stage logs, results.json, the per-NFE grids).
set -u
cd "$(dirname "$0")/.."
# shellcheck source=scripts/_budget.sh
source scripts/_budget.sh   # REPO OUT PYTHONPATH PY DRY START; left, run_part
BUDGET=${GPU_PIPELINE_BUDGET:-500}
EVAL_RESERVE=${EVAL_RESERVE:-60}
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/kacnum_gpu_pipeline.XXXXXX")}   # checkpoints stay out of $OUT

part() { run_part "$@"; }

if [ "$DRY" = "1" ]; then
    DEV=cpu
    BENCH=(--device cpu --model digits_tiny --batch-size 16 --steps 2 --warmup 1 --rounds 1 --skip-target --threads 1)
    PIPE=(--preset smoke --device cpu --threads 1)
    SIZES=(--steps 20 --distill-steps 3 --num-samples 16 --sample-batch 16 --classifier-epochs 1)
else
    DEV=cuda
    BENCH=(--device cuda --model cifar10_kacflow --batch-size 128 --bf16 --steps 20 --warmup 8 --rounds 1 --skip-target)
    PIPE=(--preset gpu --device cuda)
    SIZES=(--steps "${TEACHER_STEPS:-600}" --distill-steps "${DISTILL_STEPS:-60}" --num-samples "${NUM_SAMPLES:-500}"
           --sample-batch 500 --distill-batch 128 --classifier-epochs 3)
fi
DATA_ROOT=${KACNUM_DATA:-$HOME/.cache/kacnum/data}
if [ "$DRY" != "1" ] && { [ -d "$DATA_ROOT/cifar-10-batches-py" ] || [ -f "$DATA_ROOT/cifar-10-python.tar.gz" ]; }; then
    DATASET=cifar10
else
    DATASET=synthetic
fi
{
    echo "date: $(date -u +%FT%TZ) dryrun=$DRY budget=${BUDGET}s dataset=$DATASET"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
} > >(tee "$OUT/env.txt") 2>&1

part bench 60 "$EVAL_RESERVE" $PY benchmarks/bench_train.py "${BENCH[@]}" --out "$OUT/bench_train.json"

# NFE 100 is the teacher's own row; the baselines are compared at the students' NFEs
COMMON=("${PIPE[@]}" --dataset "$DATASET" --out "$WORK/run" --resume --quiet --nfe-list 20,4,2,1
        --log-every 50 --checkpoint-every 200 "${SIZES[@]}")
for stage in teacher sample distill baselines; do
    part "$stage" 400 "$EVAL_RESERVE" $PY experiments/cifar_distill.py "${COMMON[@]}" --stage "$stage"
done
part eval "$EVAL_RESERVE" 0 $PY experiments/cifar_distill.py "${COMMON[@]}" --stage eval

( cd "$WORK/run" 2>/dev/null && find . -maxdepth 1 -type f \( -name '*.json' -o -name '*.md' -o -name '*.png' \) \
    -exec cp {} "$OUT/" \; ) || true
cp "$WORK/run/teacher/train_log.jsonl" "$OUT/teacher_train_log.jsonl" 2>/dev/null || true

$PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
summary = {"status": (out / "status.txt").read_text().splitlines()}
for name in ("bench_train", "results"):
    f = out / f"{name}.json"
    if f.is_file():
        summary[name] = json.loads(f.read_text())
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
b = summary.get("bench_train", {}).get("train")
if b:
    print(f"bench: {b['images_per_s']:.0f} img/s, {b['ms_per_step']:.1f} ms/step, peak {b.get('peak_mem_gib', float('nan')):.2f} GiB")
for stage, r in summary.get("results", {}).get("stages", {}).items():
    if isinstance(r, dict):
        mem = r.get("peak_cuda_mib")
        ips = r.get("images_per_s")
        print(f"{stage:<10} wall {r.get('wall_seconds', float('nan')):7.1f} s"
              + (f"  peak {mem / 1024:.2f} GiB" if mem is not None else "")
              + (f"  {ips:.0f} img/s" if ips else ""))
md = out / "results.md"
print(md.read_text() if md.is_file() else "no results.md (eval did not run)")
EOF
rm -rf "$WORK"
echo "total seconds: $(( $(date +%s) - START ))" | tee -a "$OUT/status.txt"
cat "$OUT/status.txt"
# the device tool returns only a few files: keep summary.json, results.md and status.txt as they are and
# pack everything else (logs, grids, results.json) into one archive
( cd "$OUT" && files=$(ls | grep -v -x -e summary.json -e results.md -e status.txt -e gpu_pipeline.tar.gz) \
    && [ -n "$files" ] && tar -czf gpu_pipeline.tar.gz $files && rm -f $files ) || true
