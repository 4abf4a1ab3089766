#!/usr/bin/env bash
# The Dockerfile's build stage: the locked release build of the one binary, installed into OUT
# and checked to start. CI runs it too (`make image-build`), so the Dockerfile cannot rot.
# Usage: packaging/build-release.sh OUT
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: $0 OUT}
cargo build --locked --release --bin gpubridge
target=${CARGO_TARGET_DIR:-target}
install -D -m 0755 "$target/release/gpubridge" "$out/gpubridge"
# The binary must start without a GPU driver: NVML is loaded at run time, never linked.
if ldd "$out/gpubridge" | grep -qi nvidia-ml; then
  echo "gpubridge links libnvidia-ml at build time; it must dlopen it" >&2
  exit 1
fi
"$out/gpubridge" --version
