#!/usr/bin/env bash
# End-to-end load test of `imgcls serve` (HTTP + decode + preprocess + batching + model)
# with wrk: requests/s and latency percentiles at concurrency 1 and 16, one image per
# request. Starts its own server on 127.0.0.1 and stops it afterwards.
#
#   benchmarks/serve_load.sh                      # default model, samples/cat.jpg, 20 s per run
#   DURATION=10s IMAGE=samples/espresso.jpg benchmarks/serve_load.sh --max-batch 8
#
# Extra arguments go to `imgcls serve`. Needs wrk (Debian: apt-get install -y wrk).
# wrk shares the machine's cores with the server, so figures are a lower bound.
#
# Figures, and how they move with the machine: docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
PORT=${PORT:-8123}
DURATION=${DURATION:-20s}
export IMAGE=${IMAGE:-samples/cat.jpg}
URL="http://127.0.0.1:$PORT"

# Default settings, prediction log on (into a scratch file).
SCRATCH=$(mktemp -d)
PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} "$PYTHON" -m imgcls serve --port "$PORT" \
  --log-db "$SCRATCH/predictions.db" --feedback-dir "$SCRATCH/feedback" "$@" \
  > /tmp/imgcls-serve-load.log 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true; rm -rf "$SCRATCH"' EXIT
for _ in $(seq 240); do
  curl -sf "$URL/healthz" > /dev/null && break
  sleep 0.5
done
curl -sf "$URL/healthz" > /dev/null || { echo "server did not start"; cat /tmp/imgcls-serve-load.log; exit 1; }

# Warm-up, so the first measured requests do not pay for lazy initialisation.
wrk -t1 -c4 -d3s -s benchmarks/serve_load.lua "$URL" > /dev/null

for CONNECTIONS in 1 16; do
  THREADS=$(( CONNECTIONS < 2 ? 1 : 2 ))
  echo "=== concurrency $CONNECTIONS ($DURATION, $IMAGE) ==="
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency --timeout 10s \
    -s benchmarks/serve_load.lua "$URL"
done

echo "=== batch sizes seen by the model ==="
curl -s "$URL/metrics" | grep -E '^imgcls_batch_size_(sum|count)'
