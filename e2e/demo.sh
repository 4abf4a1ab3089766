#!/usr/bin/env bash
# `make demo`: a real control plane with fake GPU nodes, the reference network node, the operator
# connected to it, the sample offers published, a buyer's order leased, run on an offered node,
# ended and settled. Leaves everything up with KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${GPUBRIDGE_CACHE:-$HOME/.cache/gpubridge}"
export GPUBRIDGE_E2E_KUBECONFIG="${GPUBRIDGE_E2E_KUBECONFIG:-$CACHE/e2e/kubeconfig}"
export KUBECONFIG="$GPUBRIDGE_E2E_KUBECONFIG"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "building the control plane (cached after the first run), the operator and the sidecars"
BIN=$(bash e2e/cluster.sh bin)
export GPUBRIDGE_E2E_BIN="$BIN"
kubectl() { "$BIN/kubectl" "$@"; }
cargo build --locked --quiet --bin gpubridge --bin gpubridge-sidecar
OPERATOR="${CARGO_TARGET_DIR:-target}/debug/gpubridge"
SIDECAR="${CARGO_TARGET_DIR:-target}/debug/gpubridge-sidecar"

step "starting kube-apiserver, etcd, controller-manager, scheduler and kwok on loopback"
bash e2e/cluster.sh up
operator_pid=""
network_pid=""
sidecar_pids=""
operator_command=""
network_command=""
cleanup() {
  [ -n "$operator_pid" ] && kill "$operator_pid" 2>/dev/null && wait "$operator_pid" 2>/dev/null || true
  [ -n "$network_pid" ] && kill "$network_pid" 2>/dev/null && wait "$network_pid" 2>/dev/null || true
  for pid in $sidecar_pids; do kill "$pid" 2>/dev/null || true; done
  if [ -z "${KEEP:-}" ]; then
    bash e2e/cluster.sh down
    return
  fi
  cat <<KEPT

KEEP=1: the control plane is still running (kube-apiserver, etcd, controller-manager, scheduler,
kwok, the fake GPU nodes and the chart); the operator, the network node and the sidecars are
stopped. To look around:
  export KUBECONFIG=${KUBECONFIG:-}
  ${BIN:-}/kubectl get gpuoffers,computeleases
To start the network node again (its database and key are kept in ${NET:-}):
  $network_command &
and the operator:
  KUBECONFIG=${OPERATOR_KUBECONFIG:-} $operator_command &
then buy with:
  GPUBRIDGE_NETWORK_URL=${GPUBRIDGE_NETWORK_URL:-} GPUBRIDGE_BUYER_KEY=${GPUBRIDGE_BUYER_KEY:-} ${OPERATOR:-} order list
Stop it all with: make cluster-down
KEPT
}
trap cleanup EXIT
kubectl get nodes -L nvidia.com/gpu.product,nvidia.com/gpu.count,gpubridge.dev/pool

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
echo "network node running (pid $network_pid, key $NETWORK_KEY, log $NET/network.log)"

step "helm install: the CRDs, least-privilege RBAC, the lease-pod admission policy, the dashboard"
"$BIN/helm" upgrade --install gpubridge charts/gpubridge --namespace gpubridge-system --create-namespace \
  --values e2e/chart-values.yaml --set crds.install=true --wait
kubectl wait --for=condition=Established crd/gpuoffers.gpubridge.dev crd/computeleases.gpubridge.dev --timeout=30s >/dev/null
kubectl get clusterrole,role,validatingadmissionpolicy -A -l app.kubernetes.io/instance=gpubridge

step "starting the operator as the chart's ServiceAccount"
# kwok runs no containers: the operator runs here instead of as the Deployment's pods, with the
# chart ServiceAccount's identity (impersonation), so it has exactly the chart's permissions.
OPERATOR_KUBECONFIG="$CACHE/e2e/operator.kubeconfig"
sed 's/^  user:$/  user:\n    as: system:serviceaccount:gpubridge-system:gpubridge/' "$KUBECONFIG" >"$OPERATOR_KUBECONFIG"
echo "may the operator read Secrets in kube-system? $(kubectl --kubeconfig "$OPERATOR_KUBECONFIG" auth can-i list secrets -n kube-system || true)"
echo "may it create pods in lease namespaces? $(kubectl --kubeconfig "$OPERATOR_KUBECONFIG" auth can-i create pods -n lease-x) (the admission policy boxes what they contain)"
log="$CACHE/e2e/operator.log"
operator_command="$OPERATOR operator --log-format text --namespace gpubridge-system \
  --sidecar-image ghcr.io/gpubridge/gpubridge:demo --http-addr 127.0.0.1:18080 \
  --network-url $GPUBRIDGE_NETWORK_URL --network-key $NETWORK_KEY \
  --provider-name acme-gpu-farm --region eu-west \
  --collector-addr 127.0.0.1:17400 --collector-url http://127.0.0.1:17400 \
  --collector-status-seconds 2 --final-receipt-grace-seconds 30"
KUBECONFIG="$OPERATOR_KUBECONFIG" $operator_command >"$log" 2>&1 &
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

step "the operator publishes the idle capacity; the network's offer book"
for _ in $(seq 1 50); do [ "$(order offers -o json | grep -c offerId)" -ge 3 ] && break; sleep 0.2; done
order offers

step "a buyer: a key, a deposit of 100 USDC, and an order for one RTX 4090 for 60 seconds"
order keygen
order deposit 100
order submit --gpus 1 --model NVIDIA-GeForce-RTX-4090 --seconds 60 --max-price 1.20 \
  --image ghcr.io/acme/render:2 --cpu 4 --memory 16Gi --env SCENE=city.blend -- blender --render
LEASE=$(order list -o json | sed -n 's/.*"leaseId": "\([a-z0-9]*\)".*/\1/p' | head -1)
[ -n "$LEASE" ] || { echo "the order was not matched"; order list; exit 1; }
echo "matched: lease $LEASE"

step "intake verified the lease and created ComputeLease $LEASE; it runs"
kubectl wait "computelease/$LEASE" --for=jsonpath='{.status.phase}'=Running --timeout=60s >/dev/null
kubectl get computeleases
order list
echo
echo "Its box, in namespace lease-$LEASE:"
kubectl get namespace "lease-$LEASE" --show-labels
kubectl get networkpolicy,resourcequota,limitrange,secret,pod -n "lease-$LEASE" -o wide
echo
sleep 1
kubectl get gpuoffer rtx-workstation

USAGE_COLUMNS='LEASE:.metadata.name,RECEIPTS:.status.usage.receiptsAccepted,GPU-SECONDS:.status.usage.gpuSeconds,ENERGY-J:.status.usage.energyJoules,UTILIZATION-%:.status.usage.utilizationPercent,FINAL:.status.usage.finalReceived,TIER:.status.attestation.trustTier'
step "the pod's meter and attest sidecars (kwok runs no containers: local processes, simulated GPU)"
SC="$CACHE/e2e/sidecars/$LEASE"
rm -rf "$SC" && mkdir -p "$SC/identity" "$SC/receipts" && chmod 700 "$SC"
for f in lease.key lease.crt provider.pub; do
  kubectl get secret lease-identity -n "lease-$LEASE" -o jsonpath="{.data.${f/./\\.}}" | base64 -d >"$SC/identity/$f"
done
POD_UID=$(kubectl get pod workload -n "lease-$LEASE" -o jsonpath='{.metadata.uid}')
NODE=$(kubectl get pod workload -n "lease-$LEASE" -o jsonpath='{.spec.nodeName}')
sidecar=(--lease-id "$LEASE" --identity-dir "$SC/identity"
  --collector-url http://127.0.0.1:17400 --gpu-source simulated --simulated-seed "$NODE" --log-format text)
"$SIDECAR" meter "${sidecar[@]}" --receipts-dir "$SC/receipts" --gpus 1 --receipt-seconds 5 --http-addr 127.0.0.1:19464 >"$SC/meter.log" 2>&1 &
meter_pid=$!
"$SIDECAR" attest "${sidecar[@]}" --image ghcr.io/acme/render:2 --pod-uid "$POD_UID" --node-name "$NODE" \
  --poll-seconds 2 >"$SC/attest.log" 2>&1 &
attest_pid=$!
sidecar_pids="$meter_pid $attest_pid"
kubectl wait "computelease/$LEASE" --for=condition=Attested --timeout=30s >/dev/null
kubectl wait "computelease/$LEASE" --for=condition=Metered --timeout=30s >/dev/null
kubectl get computelease "$LEASE" -o custom-columns="$USAGE_COLUMNS"

step "waiting for the lease to reach its end; the meter's final receipt, the end report, escrow settles"
kubectl wait "computelease/$LEASE" --for=jsonpath='{.status.phase}'=Expired --timeout=120s >/dev/null
# The pod is stopped: both sidecars get SIGTERM, the meter seals its final receipt.
kill -TERM "$meter_pid" "$attest_pid" && wait "$meter_pid" "$attest_pid" || true
kubectl wait "computelease/$LEASE" --for=jsonpath='{.status.usage.finalReceived}'=true --timeout=30s >/dev/null
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
curl -fs 127.0.0.1:18080/metrics | grep -E '^gpubridge_(offer_gpus|leases|lease_ends_total|network_session_up|intake_leases_total|receipts_accepted_total|gpu_seconds_total|earnings_total|attestations_total|verification_failures_total)' | grep -v ' 0$' || true
