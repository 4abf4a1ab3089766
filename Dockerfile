# syntax=docker/dockerfile:1
# The gpubridge image: `gpubridge` (the operator, the network node, the buyer CLI) and
# `gpubridge-sidecar` (the lease pods' meter and attest, linked apart so they stay small).
# Multi-stage: a locked release build, NVIDIA's redistributable NVRTC (the probe compiles its
# CUDA kernels with it), then a small glibc runtime. NVML and CUDA's driver are dlopened at run
# time from the driver the NVIDIA container toolkit mounts, so nothing of them is here.

ARG RUST_VERSION=1.95
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# The same script CI runs (make image-build).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    bash packaging/build-release.sh /out

FROM docker.io/library/python:3.13-slim-bookworm AS nvrtc
COPY packaging/nvrtc.sh /nvrtc.sh
RUN bash /nvrtc.sh /nvrtc

FROM gcr.io/distroless/cc-debian12:nonroot
# No HEALTHCHECK: Kubernetes ignores it and probes /livez and /readyz instead, and distroless has
# no shell or client to run one with.
# checkov:skip=CKV_DOCKER_2:Kubernetes probes /livez and /readyz; HEALTHCHECK is ignored there
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="gpubridge" \
      org.opencontainers.image.description="Kubernetes operator that puts a cluster's idle GPUs on a decentralized compute network" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/gpubridge/gpubridge" \
      org.opencontainers.image.vendor="gpubridge"
COPY --from=build /out/gpubridge /out/gpubridge-sidecar /usr/local/bin/
COPY --from=nvrtc /nvrtc/nvidia/cuda_nvrtc/lib/libnvrtc.so.12 \
     /nvrtc/nvidia/cuda_nvrtc/lib/libnvrtc-builtins.so.12.9 /usr/local/lib/gpubridge/
ENV LD_LIBRARY_PATH=/usr/local/lib/gpubridge
# distroless' nonroot user, numerically, so that runAsNonRoot can verify it.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/gpubridge"]
CMD ["operator"]
