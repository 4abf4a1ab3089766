#!/usr/bin/env bash
# The e2e control plane: `up` builds (or reuses) the binaries, starts kube-apiserver, etcd,
# kube-controller-manager, kube-scheduler and kwok on loopback with `kwokctl --runtime binary`,
# and loads the fake GPU nodes; `down` stops and deletes it. The kubeconfig is written to
# $GPUBRIDGE_E2E_KUBECONFIG (default ~/.cache/gpubridge/e2e/kubeconfig).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${GPUBRIDGE_CACHE:-$HOME/.cache/gpubridge}"
NAME="${GPUBRIDGE_E2E_CLUSTER:-gpubridge-e2e}"
export KWOK_WORKDIR="$CACHE/kwok"
KUBECONFIG_PATH="${GPUBRIDGE_E2E_KUBECONFIG:-$CACHE/e2e/kubeconfig}"
say() { printf '[cluster] %s\n' "$*" >&2; }

# A caller that already built them (the demo) passes the folder, so the build is reported once.
BIN="${GPUBRIDGE_E2E_BIN:-$(bash e2e/build-binaries.sh)}"
kubectl() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }

case "${1:-}" in
up)
  mkdir -p "$(dirname "$KUBECONFIG_PATH")"
  "$BIN/kwokctl" delete cluster --name "$NAME" >/dev/null 2>&1 || true
  rm -f "$KUBECONFIG_PATH"
  say "starting $NAME"
  start=$SECONDS
  log="$CACHE/e2e/kwokctl.log"
  # The API server reaches kubelets through the real node's egress proxy (e2e/node.sh starts
  # it; until then such calls fail, and no test makes them).
  cat >"$CACHE/e2e/egress-selector.yaml" <<EOF
apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection:
    proxyProtocol: HTTPConnect
    transport:
      uds:
        udsName: $CACHE/node/egress.sock
EOF
  sed -e "s#@EGRESS_CONFIG@#$CACHE/e2e/egress-selector.yaml#" \
    -e "s#@PKI@#$KWOK_WORKDIR/clusters/$NAME/pki#g" e2e/kwok.yaml >"$CACHE/e2e/kwok.yaml"
  if ! "$BIN/kwokctl" create cluster --name "$NAME" --runtime binary --config "$CACHE/e2e/kwok.yaml" \
    --kube-apiserver-binary "$BIN/kube-apiserver" \
    --kube-controller-manager-binary "$BIN/kube-controller-manager" \
    --kube-scheduler-binary "$BIN/kube-scheduler" \
    --etcd-binary "$BIN/etcd" \
    --kwok-controller-binary "$BIN/kwok" \
    --kubeconfig "$KUBECONFIG_PATH" --wait 120s >"$log" 2>&1; then
    cat "$log" >&2
    exit 1
  fi
  kubectl apply -f e2e/fixtures/ >/dev/null
  kubectl wait --for=create namespace/default --timeout=60s >/dev/null
  say "$NAME is up in $((SECONDS - start))s: $("$BIN/kubectl" version --kubeconfig "$KUBECONFIG_PATH" 2>/dev/null | sed -n 's/Server Version: //p'), $(kubectl get nodes --no-headers | wc -l) nodes"
  say "KUBECONFIG=$KUBECONFIG_PATH"
  ;;
down)
  "$BIN/kwokctl" delete cluster --name "$NAME" >/dev/null 2>&1 || true
  rm -f "$KUBECONFIG_PATH"
  say "$NAME is down"
  ;;
bin)
  echo "$BIN"
  ;;
*)
  echo "usage: $0 up|down|bin" >&2
  exit 2
  ;;
esac
