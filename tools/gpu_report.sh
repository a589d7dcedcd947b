#!/usr/bin/env bash
# One-shot GPU speed report of the full-size GLIDE cascade on random weights.
#
#   bash tools/gpu_report.sh [--out DIR] [--python PY]    # one CUDA GPU, under 10 minutes
#   bash tools/gpu_report.sh --dry-run [--out DIR]        # the same plumbing on the CPU, tiny config
#
# Two recipes at batch 16 (tools/benchmark.py, one process each, every variant
# against plain-eager fp32 in the same process):
#   reference: 100 guided DDIM base steps + fast27 upsampler steps (GLIDE's recipe)
#   solver:    20 guided DPM-Solver++(2M) base steps + 10 upsampler steps
# Variants: fp32, fp16, bf16, fp16+cl, bf16+cl, fp16+cl+compile and bf16+cl+compile
# (torch.compile, mode='reduce-overhead': CUDA graphs; compile time is reported
# apart as compile_s and inductor's cache, kept in DIR, serves the second recipe).
# Writes DIR/report.jsonl (one JSON line per variant and recipe), DIR/report.md
# (a markdown table per recipe) and DIR/env.txt (GPU, driver, torch).
# --dry-run: the tiny shapes cascade on the CPU, batch 1, 2+1 steps, two variants.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python}
OUT="gpu_report_$(date -u +%Y%m%d-%H%M%S)"
DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --out) [ $# -ge 2 ] || { echo "error: --out needs a directory" >&2; exit 2; }; OUT=$2; shift 2 ;;
    --python) [ $# -ge 2 ] || { echo "error: --python needs an interpreter" >&2; exit 2; }; PY=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1 (use --dry-run, --out DIR, --python PY)" >&2; exit 2 ;;
  esac
done

if [ "$DRY" = 1 ]; then
  CONFIG=$ROOT/projects/glide/configs/glide_tiny_shapes-64-256.py
  COMMON=(--device cpu --batch-size 1 --variants fp32,fp32+cl)
  REF=(--steps 2 --steps-up 1); SOLVER=(--steps 2 --steps-up 1 --sampler dpmsolver++)
else
  if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "error: no CUDA device: tools/gpu_report.sh needs one GPU (bash tools/gpu_report.sh --dry-run checks the plumbing on a CPU)" >&2
    exit 1
  fi
  CONFIG=$ROOT/projects/glide/configs/glide_ddim-classifier-free_laion-64-256.py
  COMMON=(--device cuda --batch-size 16 --compile-mode reduce-overhead
          --variants fp32,fp16,bf16,fp16+cl,bf16+cl,fp16+cl+compile,bf16+cl+compile)
  REF=(--steps 100 --steps-up fast27); SOLVER=(--steps 20 --steps-up 10 --sampler dpmsolver++)
fi

mkdir -p "$OUT"
export TORCHINDUCTOR_CACHE_DIR="$OUT/inductor-cache"
{ date -u; "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
  if [ "$DRY" = 0 ]; then nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true; fi
} > "$OUT/env.txt"
: > "$OUT/report.jsonl"
: > "$OUT/report.md"
for recipe in reference solver; do
  if [ "$recipe" = reference ]; then ARGS=("${REF[@]}"); else ARGS=("${SOLVER[@]}"); fi
  echo "== $recipe: ${ARGS[*]}" >&2
  "$PY" "$ROOT/tools/benchmark.py" --config "$CONFIG" "${COMMON[@]}" "${ARGS[@]}" \
    --markdown "$OUT/$recipe.md" | sed "s/^{/{\"recipe\": \"$recipe\", /" >> "$OUT/report.jsonl"
  { echo "### $recipe (${ARGS[*]})"; echo; cat "$OUT/$recipe.md"; echo; } >> "$OUT/report.md"
  rm "$OUT/$recipe.md"
done
cat "$OUT/report.md"
echo "wrote $OUT/report.jsonl, $OUT/report.md, $OUT/env.txt" >&2
