#!/usr/bin/env bash
# The Dockerfile's build stage: the locked release build of the two binaries (gpubridge, and
# gpubridge-sidecar for the lease pods' sidecars), installed into OUT and checked to start.
# CI runs it too (`make image-build`), so the Dockerfile cannot rot.
# Usage: packaging/build-release.sh OUT
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: $0 OUT}
cargo build --locked --release --bin gpubridge --bin gpubridge-sidecar
target=${CARGO_TARGET_DIR:-target}
for binary in gpubridge gpubridge-sidecar; do
  install -D -m 0755 "$target/release/$binary" "$out/$binary"
  # Each binary must start without a GPU driver: NVML, CUDA and NVRTC are loaded at run time,
  # never linked.
  if ldd "$out/$binary" | grep -Eqi 'nvidia-ml|libcuda|nvrtc'; then
    echo "$binary links an NVIDIA library at build time; it must dlopen it" >&2
    exit 1
  fi
  "$out/$binary" --version
done
