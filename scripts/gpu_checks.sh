#!/usr/bin/env bash
# Everything only a GPU can show, in one command: the GPU tests (6 GB cap with the default model, bf16,
# telemetry, auto-tune time), the step benchmark of the default and 6 GB configs against a bare loop
# and the card's dense bf16 matmul rate, auto-tune's choices, the loader and upscale throughput.
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

"$PY" -m pytest -q -m gpu tests/test_gpu.py 2>&1 | tee "$OUT_DIR/gpu_tests.log"
for config in default 6gb; do
  "$PY" -m vsrpp_dist.bench step --config "configs/$config.yaml" --steps 50 --warmup 10 --matmul-peak \
      --json "$OUT_DIR/step_$config.json" autotune.enabled=true 2>&1 | tee "$OUT_DIR/step_$config.log"
done
# The loader is CPU work; measure it here too when the frames are at hand (FRAMES=DIR).
if [ -n "${FRAMES:-}" ]; then
  "$PY" -m vsrpp_dist.bench loader --frames "$FRAMES" --json "$OUT_DIR/loader.json" 2>&1 | tee "$OUT_DIR/loader.log"
fi
echo "figures in $OUT_DIR"
