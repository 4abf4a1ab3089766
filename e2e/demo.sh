#!/usr/bin/env bash
# `make demo`: a real control plane with fake GPU nodes, the operator, the sample offers, and a
# lease that runs on an offered node and ends. Leaves the cluster up with KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${GPUBRIDGE_CACHE:-$HOME/.cache/gpubridge}"
export GPUBRIDGE_E2E_KUBECONFIG="${GPUBRIDGE_E2E_KUBECONFIG:-$CACHE/e2e/kubeconfig}"
export KUBECONFIG="$GPUBRIDGE_E2E_KUBECONFIG"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "building the control plane (cached after the first run) and the operator"
BIN=$(bash e2e/cluster.sh bin)
kubectl() { "$BIN/kubectl" "$@"; }
cargo build --locked --quiet --bin gpubridge
OPERATOR=target/debug/gpubridge

step "starting kube-apiserver, etcd, controller-manager, scheduler and kwok on loopback"
bash e2e/cluster.sh up
operator_pid=""
cleanup() {
  [ -n "$operator_pid" ] && kill "$operator_pid" 2>/dev/null && wait "$operator_pid" 2>/dev/null || true
  if [ -z "${KEEP:-}" ]; then bash e2e/cluster.sh down; else echo "cluster kept: KUBECONFIG=$KUBECONFIG"; fi
}
trap cleanup EXIT
kubectl get nodes -L nvidia.com/gpu.product,nvidia.com/gpu.count,gpubridge.dev/pool

step "installing the CRDs (server-side apply) and starting the operator"
"$OPERATOR" crdgen | kubectl apply --server-side -f -
kubectl create namespace gpubridge-system --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl wait --for=condition=Established crd/gpuoffers.gpubridge.dev crd/computeleases.gpubridge.dev --timeout=30s >/dev/null
log="$CACHE/e2e/operator.log"
"$OPERATOR" operator --log-format text --namespace gpubridge-system \
  --sidecar-image ghcr.io/gpubridge/gpubridge:demo --http-addr 127.0.0.1:18080 >"$log" 2>&1 &
operator_pid=$!
for _ in $(seq 1 100); do
  curl -fs 127.0.0.1:18080/metrics 2>/dev/null | grep -q '^gpubridge_leader 1' && break
  sleep 0.2
done
echo "operator running (pid $operator_pid, log $log), leading, caches synced"

step "declaring the sample offers"
kubectl apply -f manifests/samples/h100-public.yaml -f manifests/samples/a100-mig.yaml -f manifests/samples/rtx-workstation.yaml
sleep 2
kubectl get gpuoffers
echo
echo "Why each H100 node does or does not count:"
kubectl get gpuoffer h100-public -o jsonpath='{range .status.nodes[*]}  {.name}{"\t"}free {.free}/{.allocatable}{"\t"}advertised {.advertised}{"\t"}{.reason}{"\n"}{end}'

step "a lease arrives: one RTX 4090 for 60 seconds"
kubectl apply -f manifests/samples/computelease-render.yaml
kubectl wait computelease/render-7f3a --for=jsonpath='{.status.phase}'=Running --timeout=60s >/dev/null
kubectl get computeleases
echo
echo "Its box, in namespace lease-render-7f3a:"
kubectl get namespace lease-render-7f3a --show-labels
kubectl get networkpolicy,resourcequota,limitrange,secret,pod -n lease-render-7f3a -o wide
echo
sleep 1
kubectl get gpuoffer rtx-workstation

step "waiting for the lease to reach its end"
kubectl wait computelease/render-7f3a --for=jsonpath='{.status.phase}'=Expired --timeout=120s >/dev/null
kubectl get computeleases -o wide
kubectl get events -A --field-selector involvedObject.kind=ComputeLease

step "deleting the lease: its namespace goes with it"
kubectl delete computelease render-7f3a --wait=true --timeout=60s
kubectl wait --for=delete namespace/lease-render-7f3a --timeout=60s 2>/dev/null || true

step "summary"
kubectl get gpuoffers
echo
curl -fs 127.0.0.1:18080/metrics | grep -E '^gpubridge_(offer_gpus|leases|lease_ends_total)' | grep -v ' 0$' || true
echo
echo "Not in this demo yet: the network node, buyer orders, metering and settlement (later issues)."
