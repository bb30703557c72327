#!/usr/bin/env bash
# Everything only a GPU can show, in one command: the GPU tests (6 GB cap with the default model, bf16,
# telemetry, auto-tune's choices and time), the step benchmark of the default and 6 GB configs against a bare loop
# and the card's dense bf16 matmul rate; with FRAMES=DIR (e.g. ../shared/data/bedroom) also the loader
# and the default model's upscale throughput; each alignment's step cost at the default size; the realistic degradation's cost; with
# QUALITY_MINUTES=N the alignment variants' held-out quality at equal time (bench quality).
# Figures land in $OUT (or ./gpu_results) as JSON and logs; copy them into BENCHMARKS.md.
#
# Needs a Python with torch + torchvision (CUDA) and this package's dependencies; on a machine without
# internet, bring wheels for what is missing (webdataset, av) and `pip install --no-index` them first.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-gpu_results}
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/gpu.txt"
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" | tee -a "$OUT_DIR/gpu.txt"

TESTS_TMP=$(mktemp -d)
"$PY" -m pytest -q -s -m gpu tests/test_gpu.py --basetemp "$TESTS_TMP" 2>&1 | tee "$OUT_DIR/gpu_tests.log"
# auto-tune's record of each run (candidates: fits, peak GB, s/iter; chosen; seconds)
for tuned in "$TESTS_TMP"/*/run/autotune.json; do
  [ -f "$tuned" ] && cp "$tuned" "$OUT_DIR/autotune_$(basename "$(dirname "$(dirname "$tuned")")").json"
done
# Upscale throughput of the default model (the 20-step run above: speed does not depend on training).
DEFAULT_RUN=$(ls -d "$TESTS_TMP"/test_default_config*/run 2>/dev/null | head -1)
if [ -n "${FRAMES:-}" ] && [ -n "$DEFAULT_RUN" ]; then
  for extra in "" "--amp" "--amp --batch 4"; do
    "$PY" -m vsrpp_dist.upscale --checkpoint "$DEFAULT_RUN/checkpoint_latest" --input "$FRAMES" \
        --output "$TESTS_TMP/upscaled" --limit 30 --quiet --overwrite $extra 2>&1 | tee -a "$OUT_DIR/upscale.log"
  done
fi
rm -rf "$TESTS_TMP"
# Inference of the default model at 960x540 -> 2880x1620: frames/s and FLOPs per frame with the per-frame
# cache off vs on (side by side, same run), in fp32, bf16, bf16 with 4 windows per forward, and compiled.
for extra in "" "--amp" "--amp --batch 4" "--amp --batch 4 --compile"; do
  tag=$(echo "${extra:-fp32}" | tr -d '-' | tr ' ' '_')
  "$PY" -m vsrpp_dist.bench upscale --config configs/default.yaml --size 960x540 --frames 24 --rounds 2 \
      --device cuda $extra --json "$OUT_DIR/upscale_$tag.json" 2>&1 | tee -a "$OUT_DIR/upscale_bench.log"
done
for config in default 6gb; do
  "$PY" -m vsrpp_dist.bench step --config "configs/$config.yaml" --steps 50 --warmup 10 --matmul-peak \
      --rounds 3 --json "$OUT_DIR/step_$config.json" 2>&1 | tee "$OUT_DIR/step_$config.log"
done
# What each alignment costs at the default size in bf16 (s/iter, peak memory, TFLOP/s).
for alignment in implicit flow flow_deform; do
  "$PY" -m vsrpp_dist.bench step --config configs/default.yaml --steps 30 --warmup 10 \
      --json "$OUT_DIR/step_default_$alignment.json" model.alignment=$alignment autotune.enabled=false \
      2>&1 | tee "$OUT_DIR/step_default_$alignment.log"
done
# What the realistic degradation costs next to bicubic at the default size: loader, device, step.
"$PY" -m vsrpp_dist.bench degradation --config configs/default.yaml --steps 30 --warmup 10 --rounds 2 \
    --json "$OUT_DIR/degradation.json" data.num_workers=6 2>&1 | tee "$OUT_DIR/degradation.log"
# Which alignment wins at GPU scale (QUALITY_MINUTES=N per variant; long: 3 variants x N minutes).
if [ -n "${QUALITY_MINUTES:-}" ]; then
  "$PY" -m vsrpp_dist.bench quality --config configs/default.yaml --minutes "$QUALITY_MINUTES" \
      ${FRAMES:+--frames "$FRAMES"} --work "$OUT_DIR/quality" --json "$OUT_DIR/quality.json" \
      data.num_workers=6 autotune.enabled=false 2>&1 | tee "$OUT_DIR/quality.log"
fi
# The loader is CPU work; measure it here too when the frames are at hand (FRAMES=DIR).
if [ -n "${FRAMES:-}" ]; then
  "$PY" -m vsrpp_dist.bench loader --frames "$FRAMES" --json "$OUT_DIR/loader.json" 2>&1 | tee "$OUT_DIR/loader.log"
fi
echo "figures in $OUT_DIR"
