#!/usr/bin/env bash
# `make demo`: a real control plane with fake GPU nodes and one real node, the reference network
# node, the operator installed by helm from its built image and connected to the network, the
# sample offers published, a buyer's order leased, run on the real node (the workload and its
# meter and attest sidecars as containers), ended and settled. Leaves everything up with KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${GPUBRIDGE_CACHE:-$HOME/.cache/gpubridge}"
export GPUBRIDGE_E2E_KUBECONFIG="${GPUBRIDGE_E2E_KUBECONFIG:-$CACHE/e2e/kubeconfig}"
export KUBECONFIG="$GPUBRIDGE_E2E_KUBECONFIG"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "building the control plane and the real node (cached after the first run), the operator and its image"
BIN=$(bash e2e/cluster.sh bin)
export GPUBRIDGE_E2E_BIN="$BIN"
kubectl() { "$BIN/kubectl" "$@"; }
helm() { "$BIN/helm" "$@"; }
bash e2e/build-node.sh >/dev/null
cargo build --locked --quiet --bin gpubridge
OPERATOR="${CARGO_TARGET_DIR:-target}/debug/gpubridge"
# The operator's image, as the Dockerfile builds it (a release build; umoci, no engine needed).
make --no-print-directory image-build >/dev/null
LAYOUT="${CARGO_TARGET_DIR:-target}/image/oci"

step "starting kube-apiserver, etcd, controller-manager, scheduler and kwok on loopback, and the real node"
bash e2e/cluster.sh up
network_pid=""
network_command=""
cleanup() {
  [ -n "$network_pid" ] && kill "$network_pid" 2>/dev/null && wait "$network_pid" 2>/dev/null || true
  if [ -z "${KEEP:-}" ]; then
    bash e2e/node.sh down
    bash e2e/cluster.sh down
    return
  fi
  cat <<KEPT

KEEP=1: the control plane, its fake GPU nodes, the real node and the operator's pods are still
running; the network node is stopped. To look around:
  export KUBECONFIG=${KUBECONFIG:-}
  ${BIN:-}/kubectl get gpuoffers,computeleases; ${BIN:-}/kubectl get pods -A -o wide
To start the network node again (its database and key are kept in ${NET:-}):
  $network_command &
  bash e2e/node.sh expose 17300 $NETWORK_ADDRESS
then buy with:
  GPUBRIDGE_NETWORK_URL=${GPUBRIDGE_NETWORK_URL:-} GPUBRIDGE_BUYER_KEY=${GPUBRIDGE_BUYER_KEY:-} ${OPERATOR:-} order list
Stop it all with: make node-down cluster-down
KEPT
}
trap cleanup EXIT
bash e2e/node.sh up
kubectl get nodes -L nvidia.com/gpu.product,nvidia.com/gpu.count,gpubridge.dev/pool,gpubridge.dev/real-node

step "starting the reference network node (its key pinned by the operator)"
NET="$CACHE/e2e/network"
rm -rf "$NET" && mkdir -p "$NET"
NETWORK_KEY=$("$OPERATOR" keygen --out "$NET/network.key")
network_command="$OPERATOR network --listen 127.0.0.1:17300 --data-dir $NET"
$network_command >"$NET/network.log" 2>&1 &
network_pid=$!
export GPUBRIDGE_NETWORK_URL=http://127.0.0.1:17300 GPUBRIDGE_BUYER_KEY="$NET/buyer.key"
order() { "$OPERATOR" order "$@"; }
for _ in $(seq 1 50); do order offers >/dev/null 2>&1 && break; sleep 0.2; done
echo "network node running on the host (pid $network_pid, key $NETWORK_KEY, log $NET/network.log)"
# The node's pods reach it at a public documentation address of the test bed's outside world.
NETWORK_ADDRESS=203.0.113.30:7300
bash e2e/node.sh expose 17300 "$NETWORK_ADDRESS"
echo "served to the real node at $NETWORK_ADDRESS"

step "loading the operator's image into the real node, then helm install: two replicas on it"
bash e2e/node.sh load-image "$LAYOUT" gpubridge.test/gpubridge 2>&1 | tail -1
kubectl create namespace gpubridge-system --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl label namespace gpubridge-system --overwrite pod-security.kubernetes.io/enforce=restricted >/dev/null
helm upgrade --install gpubridge charts/gpubridge --namespace gpubridge-system \
  --values e2e/real-node-values.yaml --set crds.install=true \
  --set "network.url=http://$NETWORK_ADDRESS" --set "network.key=$NETWORK_KEY" \
  --set network.providerName=acme-gpu-farm --set network.region=eu-west --wait --timeout 180s
kubectl get pods -n gpubridge-system -o wide
kubectl get clusterrole,role,validatingadmissionpolicy,networkpolicy -A -l app.kubernetes.io/instance=gpubridge
echo "the leader: $(kubectl get lease gpubridge-operator -n gpubridge-system -o jsonpath='{.spec.holderIdentity}')"
helm test gpubridge --namespace gpubridge-system --timeout 120s | grep -E 'TEST SUITE|Phase'

step "declaring the sample offers"
kubectl apply -f manifests/samples/h100-public.yaml -f manifests/samples/a100-mig.yaml -f manifests/samples/rtx-workstation.yaml \
  -f e2e/real-node-offer.yaml
sleep 2
kubectl get gpuoffers
echo
echo "Why each H100 node does or does not count:"
kubectl get gpuoffer h100-public -o jsonpath='{range .status.nodes[*]}  {.name}{"\t"}free {.free}/{.allocatable}{"\t"}advertised {.advertised}{"\t"}{.reason}{"\n"}{end}'

step "the operator publishes the idle capacity; the network's offer book"
for _ in $(seq 1 100); do [ "$(order offers -o json | grep -c offerId)" -ge 4 ] && break; sleep 0.2; done
order offers

step "a buyer: a key, a deposit of 100 USDC, and an order for one H100 for 60 seconds, on the real node"
order keygen
order deposit 100
# The workload serves a page on its declared port 8000 and reports its work every 10 s.
order submit --gpus 1 --model NVIDIA-H100-80GB-HBM3 --seconds 60 --max-price 3.00 \
  --image gpubridge.test/busybox:e2e --cpu 100m --memory 64Mi --port 8000 -- sh -c \
  'trap "echo stopped by the kubelet; exit 0" TERM; echo "lease $GPUBRIDGE_LEASE_ID on GPU $NVIDIA_VISIBLE_DEVICES"; httpd -p 8000 -h /www; i=0; while true; do i=$((i+1)); echo "working: $i"; sleep 10; done'
LEASE=$(order list -o json | sed -n 's/.*"leaseId": "\([a-z0-9]*\)".*/\1/p' | head -1)
[ -n "$LEASE" ] || { echo "the order was not matched"; order list; exit 1; }
echo "matched: lease $LEASE"

USAGE_COLUMNS='LEASE:.metadata.name,RECEIPTS:.status.usage.receiptsAccepted,GPU-SECONDS:.status.usage.gpuSeconds,ENERGY-J:.status.usage.energyJoules,FINAL:.status.usage.finalReceived,TIER:.status.attestation.trustTier'
step "intake verified the lease and created ComputeLease $LEASE; its pod runs on the real node"
kubectl wait "computelease/$LEASE" --for=jsonpath='{.status.phase}'=Running --timeout=120s >/dev/null
kubectl get computeleases
echo
echo "Its box, in namespace lease-$LEASE:"
kubectl get namespace "lease-$LEASE" --show-labels
kubectl get networkpolicy,resourcequota,limitrange,secret,pod -n "lease-$LEASE" -o wide
echo
echo "The GPU probe ran first and passed; the meter and attest sidecars started after it, before the workload:"
kubectl wait pod/workload -n "lease-$LEASE" --for=condition=Ready --timeout=60s >/dev/null
kubectl get pod workload -n "lease-$LEASE" -o jsonpath='{range .status.initContainerStatuses[*]}  {.name}{"\t"}started {.started}, ready {.ready} {.state.terminated.reason}{"\n"}{end}{range .status.containerStatuses[*]}  {.name}{"\t"}started {.started}, ready {.ready}{"\n"}{end}'
kubectl wait "computelease/$LEASE" --for=condition=Attested --timeout=60s >/dev/null
kubectl wait "computelease/$LEASE" --for=condition=Metered --timeout=60s >/dev/null
kubectl get computelease "$LEASE" -o custom-columns="$USAGE_COLUMNS"
echo "The network's verdict on the probe (metering starts no earlier than its pass):"
kubectl get computelease "$LEASE" -o jsonpath='  passed at {.status.attestation.probePassedAt}{"\n"}  {.status.attestation.probe}{"\n"}'

step "the buyer reaches the workload through the network: its log, and its port 8000"
# Both go through a network gateway and the operator's outbound connection: the provider's
# cluster takes no inbound traffic. Each call carries a token the buyer's key signed.
order logs "$LEASE"
order connect "$LEASE" --port 8000 --listen 127.0.0.1:18000 &
connect_pid=$!
for _ in $(seq 1 50); do page=$(curl -fs http://127.0.0.1:18000/index.html) && break; sleep 0.2; done
echo "GET http://127.0.0.1:18000/index.html → ${page:-no answer}"
kill "$connect_pid"
# The buyer follows the log to the workload's end (in the background while the lease runs).
order logs --follow "$LEASE" >"$NET/workload.log" 2>"$NET/workload-follow.log" &
follow_pid=$!

step "waiting for the lease to reach its end; the meter's final receipt, the end report, escrow settles"
kubectl wait "computelease/$LEASE" --for=jsonpath='{.status.phase}'=Expired --timeout=120s >/dev/null
kubectl wait "computelease/$LEASE" --for=jsonpath='{.status.usage.finalReceived}'=true --timeout=60s >/dev/null
wait "$follow_pid" || echo "(order logs --follow: $(cat "$NET/workload-follow.log"))"
echo "The workload's output, as the buyer followed it (gpubridge order logs --follow):"
sed 's/^/  /' "$NET/workload.log"
order status --watch "$LEASE" >/dev/null
kubectl get computeleases -o wide
kubectl get computelease "$LEASE" -o custom-columns="$USAGE_COLUMNS"
kubectl get events -A --field-selector involvedObject.kind=ComputeLease
echo
echo "The buyer's view of the order (gpubridge order status, by its lease id):"
order status "$LEASE"

step "deleting the lease: its namespace goes with it"
kubectl delete computelease "$LEASE" --wait=true --timeout=60s
kubectl wait --for=delete "namespace/lease-$LEASE" --timeout=60s 2>/dev/null || true

step "summary"
echo "Offers (cluster):"
kubectl get gpuoffers
echo
echo "Offers (network):"
order offers
echo
echo "Orders and leases (network):"
order list
echo
echo "Buyer balance (network; the charge is the provider's earnings):"
order balance
echo
echo
echo "The leader's metrics (from the real node, where its pod's address is):"
LEADER=$(kubectl get lease gpubridge-operator -n gpubridge-system -o jsonpath='{.spec.holderIdentity}')
LEADER_IP=$(kubectl get pod "$LEADER" -n gpubridge-system -o jsonpath='{.status.podIP}')
bash e2e/node.sh exec curl -fs "http://$LEADER_IP:8080/metrics" | grep -E '^gpubridge_(offer_gpus|leases|lease_ends_total|network_session_up|intake_leases_total|receipts_accepted_total|gpu_seconds_total|earnings_total|attestations_total|verification_failures_total)' | grep -v ' 0$' || true
