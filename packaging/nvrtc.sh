#!/usr/bin/env bash
# NVRTC, which the probe's CUDA engine compiles its kernels with at run time: NVIDIA's
# redistributable wheel from PyPI, pinned by version and SHA-256, unpacked into DIR (by default
# the cache). Prints the folder holding libnvrtc.so.12. The image ships it (the driver's
# libcuda is mounted by the NVIDIA container toolkit; NVRTC is not); `make unit` uses it to
# compile the kernels in a test.
# Usage: packaging/nvrtc.sh [DIR]
set -euo pipefail
VERSION=12.9.86
WHEEL=nvidia_cuda_nvrtc_cu12-$VERSION-py3-none-manylinux2010_x86_64.manylinux_2_12_x86_64.whl
SHA256=210cf05005a447e29214e9ce50851e83fc5f4358df8b453155d5e1918094dcb4
dir=${1:-${GPUBRIDGE_CACHE:-$HOME/.cache/gpubridge}/nvrtc-$VERSION}
lib=$dir/nvidia/cuda_nvrtc/lib
if [ ! -e "$lib/libnvrtc.so.12" ]; then
  mkdir -p "$dir"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --platform manylinux2010_x86_64 --python-version 3 \
    "nvidia-cuda-nvrtc-cu12==$VERSION" -d "$dir" >&2
  echo "$SHA256  $dir/$WHEEL" | sha256sum --check --quiet >&2
  python3 -m zipfile -e "$dir/$WHEEL" "$dir"
  rm "$dir/$WHEEL"
fi
echo "$lib"
