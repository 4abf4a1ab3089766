# gpubridge — see README.md. Every target builds or installs what it needs itself.

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: demo build test unit e2e lint fmt crds manifests image-build bench bench-scale cluster-up cluster-down node-up node-down

## demo: the main job — a real control plane and a real node, the operator installed from its
## image, offers, a lease run on the real node from start to end.
demo:
	bash e2e/demo.sh

build:
	$(CARGO) build --locked --release --bins

## test: everything CI runs: lint, every unit, fixture and mocked-API test, the image, then end
## to end (the chart, its RBAC, admission policy and dashboard included). The control plane's Go
## binaries and the real node's build meanwhile in the background (cold, that saves minutes);
## their log is printed when they are done.
GPUBRIDGE_CACHE ?= $(HOME)/.cache/gpubridge
test:
	mkdir -p $(GPUBRIDGE_CACHE)
	{ bash e2e/build-binaries.sh && bash e2e/build-node.sh; } >$(GPUBRIDGE_CACHE)/build-binaries.log 2>&1 & builder=$$!; \
	  $(MAKE) lint unit; status=$$?; \
	  wait $$builder; built=$$?; cat $(GPUBRIDGE_CACHE)/build-binaries.log; \
	  [ $$status = 0 ] && [ $$built = 0 ] || exit 1; \
	  $(MAKE) image-build e2e

## unit: with NVIDIA's NVRTC on the library path, so the probe's CUDA kernels are compiled too.
unit:
	nvrtc=$$(GPUBRIDGE_CACHE=$(GPUBRIDGE_CACHE) bash packaging/nvrtc.sh) && \
	  LD_LIBRARY_PATH=$$nvrtc$${LD_LIBRARY_PATH:+:$$LD_LIBRARY_PATH} GPUBRIDGE_NVRTC_REQUIRED=1 \
	  $(CARGO) test --locked --all-targets

## e2e: the end-to-end suite on a real control plane with the kwok nodes and the real node,
## brought up and down around it; then the check that the node left nothing behind.
e2e:
	bash e2e/cluster.sh up
	bash e2e/node.sh up || { bash e2e/node.sh down; bash e2e/cluster.sh down; exit 1; }
	GPUBRIDGE_E2E_REQUIRED=1 $(CARGO) test --locked --features e2e --test e2e -- --test-threads=1 --nocapture; \
	  status=$$?; bash e2e/node.sh down; bash e2e/node.sh check-clean || status=1; \
	  bash e2e/cluster.sh down; exit $$status

## cluster-up / cluster-down: the e2e control plane alone, for running the operator by hand.
cluster-up:
	bash e2e/cluster.sh up

cluster-down:
	bash e2e/cluster.sh down

## node-up / node-down: the real node (kubelet, containerd, runc, CNI, kube-proxy, kube-router's
## firewall, CoreDNS) joined to the e2e control plane, in namespaces of its own; `down` leaves
## nothing behind (`bash e2e/node.sh check-clean` says so).
node-up:
	bash e2e/node.sh up

node-down:
	bash e2e/node.sh down

## lint: formatting and clippy (the e2e suite included), warnings as errors; the fuzz targets type-check.
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets --features e2e -- -D warnings
	$(CARGO) check --locked --manifest-path fuzz/Cargo.toml --target-dir $${CARGO_TARGET_DIR:-target}/fuzz-check

fmt:
	$(CARGO) fmt

## crds: regenerate crds/ from the Rust types (a test fails when they drift).
crds:
	$(CARGO) run --locked --quiet -- crdgen --out-dir crds

## manifests: regenerate manifests/install.yaml from the chart (an e2e test fails when it drifts).
manifests:
	bash charts/render-install.sh > manifests/install.yaml

## image-build: the Dockerfile's build stage, then its runtime stage as an OCI layout built with
## umoci (there is no container engine here) in $CARGO_TARGET_DIR/image/oci, its binaries started
## inside it as its user; neither can rot.
image-build:
	bash packaging/build-release.sh $${CARGO_TARGET_DIR:-target}/image
	bash packaging/build-image.sh $${CARGO_TARGET_DIR:-target}/image $${CARGO_TARGET_DIR:-target}/image/oci

## bench-scale: the operator at 5,000 fake 8-GPU nodes and 100,000 pods on the kwok control plane
## (release build): RSS, time to the first exact offer status, and reaction to a pod create and
## delete (p50/p99) beside the floor measured in the same run. Prints figures; takes ~15 minutes.
bench-scale:
	bash e2e/cluster.sh up
	GPUBRIDGE_E2E_REQUIRED=1 $(CARGO) test --locked --release --features e2e --test e2e -- \
	  --ignored --nocapture --test-threads=1 the_operator_at_5000_nodes_and_100000_pods; \
	  status=$$?; bash e2e/cluster.sh down; exit $$status

## bench: criterion benchmarks (capacity, network matching, receipts, CC evidence and the GPU
## challenge's probe and verifier), then intake latency,
## the meter's footprint on the e2e control plane and orders per second on four CometBFT
## validators (release build); figures print to the terminal.
bench:
	$(CARGO) bench --locked --bench capacity --bench network --bench verification
	bash e2e/cluster.sh up
	GPUBRIDGE_E2E_REQUIRED=1 $(CARGO) test --locked --release --features e2e --test e2e -- \
	  --ignored --nocapture --test-threads=1 benchmark; \
	  status=$$?; bash e2e/cluster.sh down; exit $$status
