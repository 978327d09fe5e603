# syntax=docker/dockerfile:1
# dydc on NVIDIA GPUs: one process, a device worker per GPU, port 8000.
#   docker build -t dydc:local .       (or: docker compose build; see README, Deployment)
#
# torch comes from PyPI, whose Linux x86_64 wheel is the CUDA build and brings the CUDA
# runtime libraries with it as nvidia-* wheels, so a slim Python base is all the image needs;
# the host's driver comes in through the NVIDIA Container Toolkit. torch 2.13.0 from PyPI is
# built for CUDA 13.0 (driver 580 or newer); for an older driver pass
# --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 (or another cuXXX index).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# Keep equal to TORCH_VERSION in scripts/install.sh; tests/test_deploy_image.py checks that,
# and that pyproject.toml allows it.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /app

# 1. torch, the largest layer, changes least. This is what scripts/install.sh installs where a
#    GPU is present; a build has no GPU, so install.sh alone would pick the CPU build. It keeps
#    a torch that is already installed, which is why torch goes in first.
RUN python -m venv .venv \
 && .venv/bin/python -m pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

# 2. The other dependencies, with the same install step as CI and the README, before the code
#    (stub packages and README stand in for it), so that a code change does not reinstall them.
#    DYDC_EXTRAS='' (empty) installs no extras: install.sh's default is the test extras.
COPY pyproject.toml ./
COPY scripts/install.sh scripts/
RUN mkdir app routines \
 && touch README.md app/__init__.py routines/__init__.py \
 && DYDC_EXTRAS='' bash scripts/install.sh

# 3. The code, installed by the same step; the dependencies are already there.
COPY README.md ./
COPY routines/ routines/
COPY app/ app/
RUN DYDC_EXTRAS='' bash scripts/install.sh \
 && .venv/bin/python -m compileall -q app routines


FROM ${PYTHON_IMAGE} AS runtime
# Every setting is a DYDC_ variable (README, Deployment); these are the container's defaults.
# NVIDIA_DRIVER_CAPABILITIES: the driver libraries the NVIDIA Container Toolkit mounts. No
# NVIDIA_VISIBLE_DEVICES=all: a container sees the GPUs it is given (--gpus, a Compose
# reservation, a Kubernetes nvidia.com/gpu limit), and none otherwise.
# DYDC_COMPILE=true with DYDC_COMPILE_WARMUP=true: before /readyz turns 200, every routine's
# forward mode (all parameters, each dtype) is built by a build process with AOTInductor, or
# loaded from DYDC_COMPILE_CACHE_DIR when an earlier start built it (docs/compiled.md: minutes
# cold, seconds warm). That needs a C++ compiler (g++, for the packages' wrappers and the CPU's
# kernels; Triton, which the CUDA wheel of torch brings, compiles the GPU's kernels and needs a
# C compiler for its launcher). The cache lives in /var/cache/dydc, a volume in Compose and
# Kubernetes; the service creates DYDC_COMPILE_CACHE_DIR inside it, mode 0700.
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    DYDC_HOST=0.0.0.0 \
    DYDC_PORT=8000 \
    DYDC_DEVICE=auto \
    DYDC_COMPILE=true \
    DYDC_COMPILE_WARMUP=true \
    DYDC_COMPILE_CACHE_DIR=/var/cache/dydc/compiled \
    DYDC_GRACE_PERIOD_S=30
# DL3008 (pin apt package versions) is ignored on purpose: Debian's archive keeps only the
# current version of a package in a release, so a pinned g++ would fail the build at its next
# security update. The base image's tag (bookworm) fixes the release, and with it g++'s
# major version.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --create-home --home-dir /home/dydc dydc \
 && install -d -m 0700 -o 10001 -g 10001 /var/cache/dydc
WORKDIR /app
COPY --from=build /app /app
# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
EXPOSE 8000

# Liveness, with the image's own Python (there is no curl in it). Compose and Kubernetes
# check readiness (/readyz) themselves.
HEALTHCHECK --interval=15s --timeout=3s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]

# One process: `python -m app` runs one uvicorn server in-process (no --workers: each process
# would hold its own CUDA contexts; this one runs a device worker per GPU), reads every DYDC_
# setting, and drains on SIGTERM: readiness turns 503, and requests in flight and queued get
# their answers within DYDC_GRACE_PERIOD_S (30 s) of the signal. The process exits within
# 65 s: uvicorn's graceful timeout (DYDC_GRACE_PERIOD_S plus 5 s), then the worker pool's stop
# (DYDC_GRACE_PERIOD_S again). The stop grace periods of docker-compose.yml (75 s) and
# deploy/k8s (80 s) are above that.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "app"]
