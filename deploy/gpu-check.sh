#!/usr/bin/env bash
# What CI cannot run (it has no Docker engine and no GPU), on a host that has them: an NVIDIA
# GPU and driver, the NVIDIA Container Toolkit, Docker with Compose 2.24 or newer.
#
#   bash deploy/gpu-check.sh
#
# 1. builds the image (docker compose build), checks it runs as a non-root user;
# 2. starts it on the GPUs (docker-compose.yml) and a second copy on the CPU only
#    (docker-compose.cpu.yml), each as its own Compose project on its own port, and waits until
#    both are ready (the /readyz healthcheck: workers up and warm);
# 3. sends one sensitivities request per routine to each and compares the answers (values and
#    derivatives, float64, rtol 1e-6) with deploy/gpu-compare.py, run by the image's Python;
# 3b. compiled against eager on CUDA: the GPU project serves compiled forward mode (the image's
#    DYDC_COMPILE=true, warm-up on: every graph built before ready, in the compile-cache
#    volume); a second container on the GPU with DYDC_COMPILE=false serves it eagerly; one
#    request per routine of 100,000 samples (above DYDC_COMPILE_MIN_SAMPLES) to each, compared
#    (rtol 1e-6), and no graph retired by a live re-check (dydc_compile_refusals_total);
# 4. checks the image alone (docker run --gpus all, DYDC_DEVICE=auto): its HEALTHCHECK turns
#    healthy, it picks the GPU once ready, and it exits 0 on docker stop (the SIGTERM drain).
#    It has no volume, so it builds every compiled graph before /readyz turns 200: this waits
#    as long as docker-compose.yml's healthcheck allows the same cold warm-up (start_period),
#    and stops it with Compose's stop_grace_period;
# 5. stops everything, also on failure (KEEP=1 leaves the two projects running).
#
# Ports: GPU_PORT (default 18000), CPU_PORT (18001), IMAGE_PORT (18002), EAGER_PORT (18003),
# all on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

GPU_PORT="${GPU_PORT:-18000}"
CPU_PORT="${CPU_PORT:-18001}"
IMAGE_PORT="${IMAGE_PORT:-18002}"
EAGER_PORT="${EAGER_PORT:-18003}"
EAGER=dydc-gpu-check-eager
IMAGE=dydc:local
ALONE=dydc-gpu-check-image

gpu() { DYDC_HOST_PORT="127.0.0.1:$GPU_PORT" docker compose -p dydc-gpu-check \
            -f docker-compose.yml "$@"; }
cpu() { DYDC_HOST_PORT="127.0.0.1:$CPU_PORT" docker compose -p dydc-cpu-check \
            -f docker-compose.yml -f docker-compose.cpu.yml "$@"; }
step() { printf '\n== %s\n' "$*"; }
# A duration of docker-compose.yml (`key: <n>s`, as its tests require), in seconds: the
# containers this script starts by hand get the same allowances as Compose's.
compose_seconds() {
    local s
    s="$(awk -v key="$1:" '$1 == key { sub(/s$/, "", $2); print $2; exit }' docker-compose.yml)"
    [[ "$s" =~ ^[0-9]+$ ]] || { echo "no $1: <n>s in docker-compose.yml" >&2; exit 1; }
    echo "$s"
}

cleanup() {
    docker rm -f "$ALONE" "$EAGER" >/dev/null 2>&1 || true
    if [ "${KEEP:-0}" != 1 ]; then
        gpu down --remove-orphans >/dev/null 2>&1 || true
        cpu down --remove-orphans >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

step "host"
nvidia-smi -L
docker compose version

step "build"
gpu build dydc
uid="$(docker run --rm --entrypoint id "$IMAGE" -u)"
[ "$uid" != 0 ] || { echo "the image runs as root"; exit 1; }
echo "runs as uid $uid"

step "start on the GPU and on the CPU, wait until ready"
gpu up -d --wait dydc
cpu up -d --wait dydc
curl -fsS "http://127.0.0.1:$GPU_PORT/readyz"; echo
curl -fsS "http://127.0.0.1:$CPU_PORT/readyz"; echo

step "one request per routine: GPU against CPU"
docker run --rm -i --network host --entrypoint python "$IMAGE" - \
    --test "http://127.0.0.1:$GPU_PORT" --reference "http://127.0.0.1:$CPU_PORT" \
    --expect-device cuda < deploy/gpu-compare.py

step "compiled against eager on CUDA, 100,000 samples a request"
docker run -d --name "$EAGER" --gpus all -p "127.0.0.1:$EAGER_PORT:8000" \
    -e DYDC_COMPILE=false -e DYDC_DEVICE=cuda "$IMAGE" >/dev/null
for _ in $(seq 90); do
    curl -fsS "http://127.0.0.1:$EAGER_PORT/readyz" >/dev/null 2>&1 && break
    sleep 2
done
docker run --rm -i --network host --entrypoint python "$IMAGE" - \
    --test "http://127.0.0.1:$GPU_PORT" --reference "http://127.0.0.1:$EAGER_PORT" \
    --expect-device cuda -n 100000 < deploy/gpu-compare.py
curl -fsS "http://127.0.0.1:$GPU_PORT/metrics" | grep '^dydc_compiled_graphs_total'
if curl -fsS "http://127.0.0.1:$GPU_PORT/metrics" \
        | grep -E '^dydc_compile_refusals_total\{reason="(recheck|verification)"\} [1-9]'; then
    echo "a compiled graph disagreed with eager forward mode on CUDA"; exit 1
fi

step "metrics: device memory is exported on CUDA"
curl -fsS "http://127.0.0.1:$GPU_PORT/metrics" | grep '^dydc_device_memory_bytes'

step "the image alone: HEALTHCHECK, DYDC_DEVICE=auto, graceful stop"
docker run -d --name "$ALONE" --gpus all -p "127.0.0.1:$IMAGE_PORT:8000" "$IMAGE" >/dev/null
for _ in $(seq 90); do
    health="$(docker inspect -f '{{.State.Health.Status}}' "$ALONE")"
    [ "$health" = healthy ] && break
    [ "$health" = unhealthy ] && { docker logs "$ALONE"; exit 1; }
    sleep 2
done
[ "$health" = healthy ] || { echo "HEALTHCHECK never turned healthy"; docker logs "$ALONE"; exit 1; }
# No volume: the image's warm-up (DYDC_COMPILE=true, DYDC_COMPILE_WARMUP=true) builds every
# compiled graph from an empty cache before /readyz turns 200. That took 178 s on a 2-core CPU
# (docs/compiled.md), and CUDA adds Triton's kernels: wait as long as Compose's healthcheck
# allows the same cold start, not a guess of our own.
ready_wait_s="$(compose_seconds start_period)"
deadline=$((SECONDS + ready_wait_s))
readyz="http://127.0.0.1:$IMAGE_PORT/readyz"
until [[ "$(curl -fsS "$readyz" 2>/dev/null)" == *'"device":"cuda'* ]]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "not ready on the GPU within ${ready_wait_s} s (docker-compose.yml's start_period)"
        curl -sS "$readyz" || true; echo
        docker logs "$ALONE"; exit 1
    fi
    sleep 5
done
curl -fsS "$readyz"; echo
stop_s="$(compose_seconds stop_grace_period)"
docker stop -t "$stop_s" "$ALONE" >/dev/null
code="$(docker inspect -f '{{.State.ExitCode}}' "$ALONE")"
# 0, or 143 where uvicorn's re-raised SIGTERM ends the process after its shutdown.
case "$code" in 0|143) ;; *) echo "exit code $code after docker stop"; docker logs "$ALONE"; exit 1;; esac
docker logs "$ALONE" 2>&1 | grep -q "Application shutdown complete" \
    || { echo "no graceful shutdown in the logs"; docker logs "$ALONE"; exit 1; }
echo "stopped cleanly (exit code $code)"

step "gpu-check: all passed"
