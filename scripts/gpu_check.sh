#!/usr/bin/env bash
# One prepared GPU check for kacnum (single H100/H200, ~5 minutes, no network, no POT needed).
#
#   bash scripts/gpu_check.sh                       # results under $OUT (default ./gpu_out)
#   KACNUM_GPU_CHECK_DRYRUN=1 bash scripts/gpu_check.sh   # every part tiny, on the CPU (rehearsal)
#
# Parts, in order of importance, each under `timeout` and inside one overall budget
# (GPU_CHECK_BUDGET seconds, default 290; a part gets min(its limit, what is left)):
#   env        nvidia-smi, versions, which optional packages import           -> env.txt
#   bench      train throughput of cifar10_kacflow, batch 128, bf16 (30 timed steps after 10
#              warm-up steps) and the Kac-target cost vs Gaussian FM          -> bench_train.json
#   sampler    KacProcess / KacPath sampler throughput, float32, 256x3072 and 128x3x32x32
#                                                                             -> kac_sampler.json
#   pipeline   experiments/cifar_distill.py --preset gpu: teacher 120 steps, --resume to 200, then
#              stage sample (256 images, guided AB-2, 100 steps); CIFAR-10 if found under
#              $KACNUM_DATA, else SYNTHETIC CIFAR-shaped data (--dataset synthetic)
#                                                                             -> pipeline/*.json, *.png
#   tests      pytest -k cuda on the device-parametrised test files            -> pytest_cuda.txt
# Every part's exit code goes to status.txt; summary.json gathers the JSON files.
# Optional: GPU_CHECK_COMPILE=1 adds a torch.compile throughput run (slow to compile).
set -u
cd "$(dirname "$0")/.."
# shellcheck source=scripts/_budget.sh
source scripts/_budget.sh   # REPO OUT PYTHONPATH PY DRY START; left, run_part
BUDGET=${GPU_CHECK_BUDGET:-290}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kacnum_gpu_check.XXXXXX")   # big files (checkpoints) stay out of $OUT

# part NAME LIMIT_S CMD...: run_part with no time kept in reserve
part() { local name=$1 limit=$2; shift 2; run_part "$name" "$limit" 0 "$@"; }

if [ "$DRY" = "1" ]; then
    DEV=cpu
    BENCH_ARGS=(--device cpu --model digits_tiny --batch-size 16 --steps 2 --warmup 1 --rounds 1 --target-reps 2 --threads 1)
    SAMPLER_ARGS=(--device cpu --shapes 8x64 2x3x8x8 --reps 1 --warmup 0 --threads 1)
    PIPE_PRESET=(--preset smoke --device cpu)
    PIPE_STEPS=(6 10)
    SAMPLE_ARGS=(--num-samples 8 --sample-steps 3)
else
    DEV=cuda
    BENCH_ARGS=(--device cuda --model cifar10_kacflow --batch-size 128 --bf16 --steps 30 --warmup 10 --rounds 3 --target-reps 20)
    SAMPLER_ARGS=(--device cuda --shapes 256x3072 128x3x32x32 --reps 20 --warmup 3)
    PIPE_PRESET=(--preset gpu --device cuda)
    PIPE_STEPS=(120 200)
    SAMPLE_ARGS=(--num-samples 256 --sample-steps 100)
fi

# ---------------------------------------------------------------- env
{
    echo "date: $(date -u +%FT%TZ)  dryrun=$DRY  budget=${BUDGET}s"
    command -v nvidia-smi >/dev/null && nvidia-smi || echo "nvidia-smi: not found"
    $PY - <<'EOF'
import importlib, sys
print("python", sys.version.split()[0])
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, f"{p.total_memory / 2**30:.1f} GiB", "bf16", torch.cuda.is_bf16_supported())
for m in ("numpy", "scipy", "tqdm", "PIL", "sklearn", "matplotlib", "pytest", "hypothesis", "ot"):
    try:
        mod = importlib.import_module(m)
        print(f"  {m:<11} {getattr(mod, '__version__', '?')}")
    except Exception as e:  # noqa: BLE001
        print(f"  {m:<11} MISSING ({type(e).__name__})")
import kacnum.images.train, kacnum.flows.paths, kacnum.processes.kac  # noqa: F401  (must import without POT)
print("kacnum imports OK")
EOF
} > >(tee "$OUT/env.txt") 2>&1
echo "env rc=$? seconds=$(( $(date +%s) - START ))" | tee -a "$OUT/status.txt"

# ---------------------------------------------------------------- train throughput + Kac target cost
part bench 150 $PY benchmarks/bench_train.py "${BENCH_ARGS[@]}" --out "$OUT/bench_train.json"
if [ "${GPU_CHECK_COMPILE:-0}" = "1" ] && [ "$DRY" != "1" ]; then
    part bench_compile 200 $PY benchmarks/bench_train.py "${BENCH_ARGS[@]}" --compile --skip-target \
        --out "$OUT/bench_train_compile.json"
fi

# ---------------------------------------------------------------- Kac sampler throughput
part sampler 60 $PY scripts/bench_kac_sampler.py "${SAMPLER_ARGS[@]}" --out "$OUT/kac_sampler.json"

# ---------------------------------------------------------------- pipeline smoke (teacher, resume, sample)
DATA_ROOT=${KACNUM_DATA:-$HOME/.cache/kacnum/data}
if [ "$DRY" != "1" ] && { [ -d "$DATA_ROOT/cifar-10-batches-py" ] || [ -f "$DATA_ROOT/cifar-10-python.tar.gz" ]; }; then
    DATASET=cifar10
else
    DATASET=synthetic
fi
echo "pipeline dataset: $DATASET" | tee -a "$OUT/status.txt"
PIPE="$WORK/pipeline"
COMMON=("${PIPE_PRESET[@]}" --dataset "$DATASET" --out "$PIPE" --quiet --log-every 20 --checkpoint-every 100)
part pipeline_teacher 120 $PY experiments/cifar_distill.py "${COMMON[@]}" --stage teacher --steps "${PIPE_STEPS[0]}"
part pipeline_resume 100 $PY experiments/cifar_distill.py "${COMMON[@]}" --stage teacher --steps "${PIPE_STEPS[1]}" --resume
part pipeline_sample 80 $PY experiments/cifar_distill.py "${COMMON[@]}" --stage sample "${SAMPLE_ARGS[@]}"
mkdir -p "$OUT/pipeline"
( cd "$PIPE" 2>/dev/null && find . -type f \( -name '*.json' -o -name '*.jsonl' -o -name '*.png' \) \
    -exec cp --parents {} "$OUT/pipeline/" \; ) || true

# ---------------------------------------------------------------- CUDA-parametrised tests
TESTS=()
for f in tests/test_kac.py tests/test_paths.py tests/test_models.py tests/test_solvers.py \
         tests/test_guidance.py tests/test_losses.py tests/test_sampler.py tests/test_distill.py; do
    [ -f "$f" ] && TESTS+=("$f")
done
if $PY -c "import pytest, hypothesis" 2>/dev/null && [ ${#TESTS[@]} -gt 0 ]; then
    part pytest_cuda 150 $PY -m pytest -q --maxfail=5 -k cuda -p no:cacheprovider "${TESTS[@]}"
else
    echo "pytest_cuda skipped (pytest/hypothesis missing or no test files)" | tee -a "$OUT/status.txt"
fi

# ---------------------------------------------------------------- summary
$PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
summary = {"status": (out / "status.txt").read_text().splitlines()}
for name in ("bench_train", "bench_train_compile", "kac_sampler"):
    f = out / f"{name}.json"
    if f.is_file():
        summary[name] = json.loads(f.read_text())
res = out / "pipeline" / "results.json"
if res.is_file():
    summary["pipeline"] = json.loads(res.read_text())
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
b = summary.get("bench_train", {})
if b:
    t = b["train"]
    print(f"train: {b['model']} batch {b['batch_size']} bf16={b['bf16']} on {b['device_name']}: "
          f"{t['images_per_s']:.1f} images/s, {t['ms_per_step']:.1f} ms/step, "
          f"{t['s_per_1000_steps']:.1f} s/1000 steps, peak {t.get('peak_mem_gib', float('nan')):.2f} GiB")
    if "target" in b:
        g = b["target"]
        print(f"Kac target {g['kac_target_ms']:.2f} ms = {g['kac_target_fraction_of_step']:.2%} of a step "
              f"(Gaussian {g['gaussian_target_fraction_of_step']:.2%}; extra {g['kac_extra_cost_fraction']:.2%})")
EOF
rm -rf "$WORK"
echo "total seconds: $(( $(date +%s) - START ))" | tee -a "$OUT/status.txt"
cat "$OUT/status.txt"
