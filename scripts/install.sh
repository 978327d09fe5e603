#!/usr/bin/env bash
# Create .venv and install dydc into it, with the test extras, or those named in DYDC_EXTRAS
# (comma-separated; DYDC_EXTRAS= empty installs none).
# torch: a wheel already on this machine's pip find-links if there is one; else the CUDA build
# where an NVIDIA GPU is present, and the CPU build (from PyTorch's CPU index) where not.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION="${DYDC_TORCH_VERSION:-2.13.0}"
TORCH_CPU_INDEX="${DYDC_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
PYTHON="${PYTHON:-python3}"

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip "$@"; }

if .venv/bin/python -c "import torch" 2>/dev/null; then
    :  # already installed: keep it
elif pip install -q --no-index --no-deps "torch==${TORCH_VERSION}" 2>/dev/null; then
    echo "install: torch ${TORCH_VERSION} from a local wheel"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    pip install -q "torch==${TORCH_VERSION}"
else
    pip install -q "torch==${TORCH_VERSION}" --index-url "${TORCH_CPU_INDEX}"
fi
EXTRAS="${DYDC_EXTRAS-test}"
pip install -q -e ".${EXTRAS:+[$EXTRAS]}"
# The client (client/: dydc-client, import name dydc) and its command line `dydc`, so that the
# suite covers them; it installs alone too (pip install ./client). Not in the image, whose
# build context has no client/.
if [ -f client/pyproject.toml ]; then
    pip install -q -e "./client[cli,fast]"
fi
echo "install: done ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
