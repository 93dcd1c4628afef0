#!/usr/bin/env bash
# The main job: install, start a local S3 server (SeaweedFS), make a tiny random-weight
# Llama model, and serve it with SGLang + objectcache in layerwise mode.
#
#   bash scripts/run.sh                # SGLang on http://127.0.0.1:30000, S3 on :8333
#   PORT=30001 S3_PORT=9000 bash scripts/run.sh
#   LAYERWISE=0 bash scripts/run.sh    # page mode: HiCache L3 prefetch instead of layerwise
#
# Layerwise is the default because it wins on SGLang's own clients (benchmarks/serving.py,
# docs/results.md#serving): on W1 (restart reuse) its mean TTFT was 0.15x radix-only's with
# the 8-layer model and 0.56x with the tiny one; page mode's 0.34x and 0.79x.
#
# Ctrl-C stops both servers. State (S3 data, model, logs) lives in .objectcache/, so a
# second run serves earlier prefixes straight from the bucket.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh

PORT=${PORT:-30000}
S3_PORT=${S3_PORT:-8333}
STATE=${STATE:-.objectcache}
PY=.venv/bin/python
mkdir -p "$STATE"

# Credentials travel through the standard AWS chain, not the SGLang command line (SGLang
# logs its flags and shows them in /server_info).
export AWS_ACCESS_KEY_ID=objectcache AWS_SECRET_ACCESS_KEY=objectcache-secret
export SGLANG_USE_CPU_ENGINE=${SGLANG_USE_CPU_ENGINE:-$([ -x "$(command -v nvidia-smi)" ] && echo 0 || echo 1)}

$PY -m objectcache_dev.tinymodel "$STATE/tiny-llama" >/dev/null
echo "[run] tiny model in $STATE/tiny-llama"

$PY -m objectcache_dev.s3server start --dir "$STATE/s3" --port "$S3_PORT" --bucket objectcache \
  --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" > "$STATE/s3.log" 2>&1 &
S3_PID=$!
trap 'kill $S3_PID 2>/dev/null; wait $S3_PID 2>/dev/null' EXIT
for _ in $(seq 1 120); do
  grep -q "ready at" "$STATE/s3.log" 2>/dev/null && break
  kill -0 $S3_PID 2>/dev/null || { cat "$STATE/s3.log"; exit 1; }
  sleep 0.5
done
echo "[run] $(grep 'ready at' "$STATE/s3.log")"

CONFIG=$(printf '{"endpoint_url":"http://127.0.0.1:%s","bucket":"objectcache","layerwise":{"enabled":%s}}' \
  "$S3_PORT" "$([ "${LAYERWISE:-1}" = 1 ] && echo true || echo false)")
ARGS=(--model-path "$STATE/tiny-llama" --host 127.0.0.1 --port "$PORT" --page-size 64
      --enable-cache-report --enable-metrics
      --enable-hierarchical-cache --hicache-storage-backend objectcache
      --hicache-storage-prefetch-policy wait_complete
      --hicache-storage-backend-extra-config "$CONFIG")
if [ "$SGLANG_USE_CPU_ENGINE" = 1 ]; then
  # SGLang's CPU engine: torch attention, no overlap scheduler, host pools copied by torch.
  ARGS+=(--device cpu --attention-backend torch_native --disable-overlap-schedule
         --max-total-tokens 16384 --context-length 8192
         --hicache-io-backend direct --hicache-mem-layout layer_first)
fi
echo "[run] python -m sglang.launch_server ${ARGS[*]}"
$PY -m sglang.launch_server "${ARGS[@]}"
