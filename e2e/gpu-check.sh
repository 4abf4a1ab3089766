#!/usr/bin/env bash
# The sidecar's checks on a machine with NVIDIA GPUs (never part of `make test`: CI has none):
# the probe's CUDA engine loads, NVML reads what the meter and attest sidecars would, the CUDA
# engine commits the CPU reference's root for the same nonce, and a calibration at the model's
# memory, its product checked as the network checks a lease's, gives the figures a band is set
# from. A provider runs it on a GPU node with the image's binary; the README's GPU figures come
# from it. Needs the driver, and NVRTC on the library path (`packaging/nvrtc.sh` prints where).
# Usage: e2e/gpu-check.sh [SIDECAR] [RUNS]   (SIDECAR: a gpubridge-sidecar, default in PATH)
set -euo pipefail
sidecar=${1:-gpubridge-sidecar}
runs=${2:-3}
say() { printf '\n== %s\n' "$*"; }

say machine
nvidia-smi --query-gpu=name,memory.total,driver_version,vbios_version,uuid --format=csv
say engine
"$sidecar" probe-engine --require cuda
say "what NVML reads"
"$sidecar" gpus

say "the same 64 MiB on both engines"
cpu=$("$sidecar" probe-engine --calibrate --engine cpu --memory-mib 64 | tee /dev/stderr)
cuda=$("$sidecar" probe-engine --calibrate --engine cuda --memory-mib 64 | tee /dev/stderr)
if [ "$(grep '^root:' <<<"$cpu")" != "$(grep '^root:' <<<"$cuda")" ]; then
  echo "FAIL: the CUDA engine's root differs from the CPU reference's" >&2
  exit 1
fi
echo "the roots match"

memory=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
say "the model's memory, $memory MiB, $runs times (each prints its GOPS)"
for _ in $(seq "$runs"); do
  time "$sidecar" probe-engine --calibrate --engine cuda --memory-mib "$memory"
done
