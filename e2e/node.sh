#!/usr/bin/env bash
# A real node for the e2e control plane (e2e/cluster.sh): kubelet, containerd, runc, the CNI
# bridge, kube-proxy (nftables), kube-router's NetworkPolicy firewall, CoreDNS and eight
# simulated GPUs (`gpubridge simulated-gpu-plugin`, a kubelet device plugin), all inside private
# mount, network and UTS namespaces, so that nothing system-wide changes:
#   - the node's network namespace holds the pod bridge (10.244.0.0/24), the node address
#     10.88.0.2 and 10.88.255.1, where the API server is reached through a Unix socket (a socat
#     pair: the API server listens on the host's loopback only); the API server reaches the
#     kubelet (logs, exec) through e2e/node/egress-proxy.py, its egress selector's proxy;
#   - an "outside world" namespace behind a veth (10.88.0.1) serves HTTP on the fake metadata
#     address 169.254.169.254, a private address 10.99.0.10 and a public documentation address
#     203.0.113.10, for egress tests; no packet leaves the machine;
#   - the node's mount namespace has a private /run, an overlay on /var (upper layer in the cache)
#     and the kernel tunables the kubelet would rewrite shadowed by files;
#   - every process runs in the cgroup /gpubridge-node (the kubelet's cgroupRoot), so `down`
#     finds and stops them all, then removes the cgroups; the namespaces, their links and rules
#     go with their last process.
# Usage: e2e/node.sh up|down|check-clean   (`up` is idempotent: it replaces a node)
#        e2e/node.sh exec CMD...                     runs CMD in the node's namespaces
#        e2e/node.sh load-image OCI_LAYOUT NAME      imports an image (its tag from the layout)
#        e2e/node.sh expose HOST_PORT ADDRESS:PORT   the host's 127.0.0.1:HOST_PORT, served to
#                                                    the node at ADDRESS:PORT of the outside world
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${GPUBRIDGE_CACHE:-$HOME/.cache/gpubridge}"
CLUSTER="${GPUBRIDGE_E2E_CLUSTER:-gpubridge-e2e}"
KUBECONFIG_PATH="${GPUBRIDGE_E2E_KUBECONFIG:-$CACHE/e2e/kubeconfig}"
PKI="$CACHE/kwok/clusters/$CLUSTER/pki"
STATE="$CACHE/node"
NODE=gpubridge-node
CGROUP=gpubridge-node
NODE_IP=10.88.0.2
WORLD_IP=10.88.0.1
API_IP=10.88.255.1
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.0.0.0/24
DNS_IP=10.0.0.10
# The simulated GPUs the device plugin advertises; their UUIDs are seeded with the node's name.
GPUS=8
# What NVIDIA's GPU feature discovery would label the node with for them.
GPU_LABELS="nvidia.com/gpu.present=true,nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3,nvidia.com/gpu.memory=81559,nvidia.com/gpu.count=$GPUS"
say() { printf '[node] %s\n' "$*" >&2; }

# The cgroup hierarchies of this machine: every cgroup v1 hierarchy, and the unified one.
hierarchies() {
  local h
  for h in /sys/fs/cgroup/*/; do
    h=${h%/}
    [ -e "$h/cgroup.procs" ] && echo "$h"
  done
}
holder_pid() { cat "$STATE/$1.pid" 2>/dev/null || true; }

# Runs a command (in the background, logging to $STATE/log/NAME.log) inside the node's cgroup
# and, with a holder's name, inside its namespaces.
start() { # name, holder ("" for the host's), command...
  local name=$1 holder=$2; shift 2
  local enter=()
  [ -n "$holder" ] && enter=(nsenter -t "$(holder_pid "$holder")" -m -n -u --)
  setsid "${enter[@]}" bash -c 'for h in $1; do echo $$ > "$h/'"$CGROUP"'/system/cgroup.procs"; done; shift; exec "$@"' \
    _ "$(hierarchies | tr '\n' ' ')" "$@" >"$STATE/log/$name.log" 2>&1 </dev/null &
  echo $! >"$STATE/$name.pid"
}
in_node() { nsenter -t "$(holder_pid node)" -m -n -u -- "$@"; }
in_world() { nsenter -t "$(holder_pid world)" -n -- "$@"; }
ctr() { in_node "$NODE_BIN/ctr" --address /run/containerd/containerd.sock -n k8s.io "$@"; }
# Stops a process `start` started, if it runs.
stop() { [ -f "$STATE/$1.pid" ] && kill "$(cat "$STATE/$1.pid")" 2>/dev/null; rm -f "$STATE/$1.pid"; }

# A host port served in the outside world through a Unix socket (a socat pair, as the API server
# is): the node's pods reach a process of the host at an address of the outside world, and the
# host's loopback stays closed to them.
expose() { # host port, address:port in the outside world
  local port=$1 address=${2%:*} listen=${2##*:} name="expose-${2//[.:]/-}"
  stop "$name-host"; stop "$name-world"
  in_world ip addr replace "$address/32" dev lo
  rm -f "$STATE/$name.sock"
  start "$name-host" "" socat "UNIX-LISTEN:$STATE/$name.sock,fork,mode=600" "TCP:127.0.0.1:$port"
  start "$name-world" world socat "TCP-LISTEN:$listen,bind=$address,fork,reuseaddr" "UNIX-CONNECT:$STATE/$name.sock"
  for _ in $(seq 50); do [ -S "$STATE/$name.sock" ] && return; sleep 0.1; done
  say "the forwarder to 127.0.0.1:$port did not start"; return 1
}

# Every process in the node's cgroups, stopped; then the cgroups removed, deepest first.
down() {
  local h pids round
  for round in 1 2 3 4 5 6 7 8 9 10; do
    pids=$(find "/sys/fs/cgroup/pids/$CGROUP" "/sys/fs/cgroup/unified/$CGROUP" -name cgroup.procs \
      -exec cat {} + 2>/dev/null | sort -u || true)
    [ -z "$pids" ] && break
    # Frozen cgroups cannot die: thaw first. The first round asks, the later ones insist.
    find /sys/fs/cgroup/freezer/$CGROUP -name freezer.state 2>/dev/null |
      while read -r f; do echo THAWED >"$f" 2>/dev/null || true; done
    if [ "$round" = 1 ]; then kill $pids 2>/dev/null || true; sleep 1; else kill -9 $pids 2>/dev/null || true; sleep 0.5; fi
  done
  for h in $(hierarchies); do
    [ -d "$h/$CGROUP" ] && find "$h/$CGROUP" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  rm -f "$STATE"/*.pid
}

# The host's links, firewall rules and mounts, which the node must never change: recorded by
# `up`, compared by `check-clean`.
host_state() {
  ip -o link show | sed 's/^[0-9]*: \([^:@]*\).*/\1/' | sort
  echo "--- rules"
  nft list ruleset 2>&1
  echo "--- mounts"
  cut -d' ' -f5 /proc/self/mountinfo | sort
}

# What `down` must leave: no process in the node's cgroups, no cgroup, no namespace holder, no
# socket, and the host's links, rules and mounts as `up` found them. Prints what is left, fails
# if anything is.
check_clean() {
  local left=0 h
  if [ -f "$STATE/host-before" ] && ! host_state | diff "$STATE/host-before" - >"$STATE/host-diff"; then
    echo "the host changed:"; cat "$STATE/host-diff"; left=1
  fi
  for h in $(hierarchies); do
    if [ -d "$h/$CGROUP" ]; then echo "cgroup left: $h/$CGROUP"; left=1; fi
  done
  if pgrep -f "$STATE/" >/dev/null; then echo "process left: $(pgrep -af "$STATE/" | head -3)"; left=1; fi
  if ls "$STATE"/*.sock >/dev/null 2>&1; then echo "socket left: $(ls "$STATE"/*.sock)"; left=1; fi
  if grep -q " $STATE/" /proc/self/mountinfo; then echo "mount left: $(grep " $STATE/" /proc/self/mountinfo | head -3)"; left=1; fi
  return $left
}

case "${1:-}" in
up) ;;
down)
  down
  rm -f "$STATE"/*.sock
  # Its Node object too, where the control plane still answers.
  if [ -f "$KUBECONFIG_PATH" ]; then
    "${GPUBRIDGE_E2E_BIN:-$(bash e2e/build-binaries.sh 2>/dev/null)}/kubectl" --kubeconfig "$KUBECONFIG_PATH" --request-timeout 5s \
      delete node "$NODE" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  fi
  say "$NODE is down"
  exit 0
  ;;
check-clean)
  check_clean
  exit
  ;;
exec)
  shift
  in_node "$@"
  exit
  ;;
load-image)
  [ $# = 3 ] || { echo "usage: $0 load-image OCI_LAYOUT NAME" >&2; exit 2; }
  NODE_BIN="${GPUBRIDGE_NODE_BIN:-$(bash e2e/build-node.sh)}"
  [ -f "$2/index.json" ] || { say "$2 is not an OCI layout: run make image-build"; exit 1; }
  tar -C "$2" -cf "$STATE/images/loaded.tar" .
  ctr images import --base-name "$3" "$STATE/images/loaded.tar" >/dev/null
  rm -f "$STATE/images/loaded.tar"
  say "loaded $(ctr images ls -q | grep "^$3:" | tr '\n' ' ')"
  exit
  ;;
expose)
  [ $# = 3 ] || { echo "usage: $0 expose HOST_PORT ADDRESS:PORT" >&2; exit 2; }
  expose "$2" "$3"
  exit
  ;;
*)
  echo "usage: $0 up|down|check-clean|exec CMD...|load-image OCI_LAYOUT NAME|expose HOST_PORT ADDRESS:PORT" >&2
  exit 2
  ;;
esac

start_time=$SECONDS
cargo build --locked --quiet --bin gpubridge
GPUBRIDGE="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/debug/gpubridge"
BIN="${GPUBRIDGE_E2E_BIN:-$(bash e2e/build-binaries.sh)}"
NODE_BIN="${GPUBRIDGE_NODE_BIN:-$(bash e2e/build-node.sh)}"
kubectl() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }
[ -f "$KUBECONFIG_PATH" ] && [ -f "$PKI/ca.key" ] || { say "the control plane is not up: run e2e/cluster.sh up"; exit 1; }
down
# A node that is replaced starts as a new one: its old Node object (and so its pods) goes.
kubectl delete node "$NODE" --ignore-not-found --wait=true >/dev/null
rm -rf "$STATE/var-upper" "$STATE/var-work" "$STATE/log" "$STATE/pki"
mkdir -p "$STATE"/{log,pki,var-upper,var-work,etc,sysctl,images}
host_state >"$STATE/host-before"
for h in $(hierarchies); do
  mkdir -p "$h/$CGROUP/system"
  # cpuset cgroups start empty; a process cannot join one until it has CPUs and memory nodes.
  if [ -e "$h/cpuset.cpus" ]; then
    cat "$h/cpuset.cpus" >"$h/$CGROUP/cpuset.cpus"; cat "$h/cpuset.mems" >"$h/$CGROUP/cpuset.mems"
    cat "$h/cpuset.cpus" >"$h/$CGROUP/system/cpuset.cpus"; cat "$h/cpuset.mems" >"$h/$CGROUP/system/cpuset.mems"
  fi
done

# Identities, signed by the control plane's CA: the kubelet as a node (Node authorizer), the
# proxy as system:kube-proxy, the firewall as a user bound to its own ClusterRole.
api_port=$(sed -n 's#.*server: https://127.0.0.1:\([0-9]*\).*#\1#p' "$KUBECONFIG_PATH")
identity() { # name, CN, O
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$STATE/pki/$1.key" \
    -subj "/CN=$2${3:+/O=$3}" -out "$STATE/pki/$1.csr" 2>/dev/null
  openssl x509 -req -in "$STATE/pki/$1.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 2 -out "$STATE/pki/$1.crt" 2>/dev/null
  cat >"$STATE/pki/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: e2e, cluster: {server: "https://$API_IP:$api_port", certificate-authority: "$PKI/ca.crt"}}]
users: [{name: $1, user: {client-certificate: "$STATE/pki/$1.crt", client-key: "$STATE/pki/$1.key"}}]
contexts: [{name: e2e, context: {cluster: e2e, user: $1}}]
current-context: e2e
EOF
}
identity kubelet "system:node:$NODE" system:nodes
identity kube-proxy system:kube-proxy
identity kube-router gpubridge-e2e:kube-router
kubectl apply -f e2e/node/cluster.yaml >/dev/null

# The namespaces, held by two sleeping processes in the node's cgroup.
say "starting $NODE: namespaces, the outside world, the API server's socket"
rm -f "$STATE/node.ready"
start node "" unshare --mount --net --uts --propagation private --fork -- bash -c '
  set -e
  hostname '"$NODE"'
  mount -t tmpfs -o mode=755 tmpfs /run
  mount -t overlay overlay -o lowerdir=/var,upperdir='"$STATE"'/var-upper,workdir='"$STATE"'/var-work /var
  for t in vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops kernel/keys/root_maxkeys kernel/keys/root_maxbytes; do
    f='"$STATE"'/sysctl/${t//\//.}; cat /proc/sys/$t > $f; mount --bind $f /proc/sys/$t
  done
  mkdir -p /run/containerd /var/lib/kubelet /var/log/pods
  ip link set lo up
  touch '"$STATE"'/node.ready
  exec sleep infinity'
start world "" unshare --net --fork -- sleep infinity
# unshare(2) moves the unshare process itself into the new namespaces; nsenter enters its.
in_own_netns() { [ "$(readlink "/proc/$(holder_pid "$1")/ns/net")" != "$(readlink /proc/self/ns/net)" ]; }
for _ in $(seq 100); do [ -e "$STATE/node.ready" ] && in_own_netns world && break; sleep 0.1; done
[ -e "$STATE/node.ready" ] && in_own_netns world || {
  say "the node's namespaces did not start"; cat "$STATE/log/node.log" "$STATE/log/world.log" >&2; exit 1; }
ip link add eth0 netns "$(holder_pid node)" type veth peer name eth0 netns "$(holder_pid world)"
in_node ip addr add "$NODE_IP/24" dev eth0
in_node ip link set eth0 up
in_node ip addr add "$API_IP/32" dev lo
in_node ip route add default via "$WORLD_IP"
in_world ip link set lo up
in_world ip addr add "$WORLD_IP/24" dev eth0
in_world ip link set eth0 up
printf '#!/bin/sh\nprintf "HTTP/1.0 200 OK\\r\\nContent-Type: text/plain\\r\\n\\r\\nhello from %%s\\n" "$1"\n' \
  >"$STATE/etc/world-http.sh"
for addr in 169.254.169.254 10.99.0.10 203.0.113.10; do
  in_world ip addr add "$addr/32" dev lo
  start "world-$addr" world socat "TCP-LISTEN:80,bind=$addr,fork,reuseaddr" "SYSTEM:sh $STATE/etc/world-http.sh $addr"
done
rm -f "$STATE/apiserver.sock"
start apiserver-host "" socat "UNIX-LISTEN:$STATE/apiserver.sock,fork,mode=600" "TCP:127.0.0.1:$api_port"
start apiserver-node node socat "TCP-LISTEN:$api_port,bind=$API_IP,fork,reuseaddr" "UNIX-CONNECT:$STATE/apiserver.sock"
# ...and the API server reaches the kubelet (logs, exec) through its egress proxy, which dials
# the node's, pods' and Services' addresses from inside the node's network namespace.
start egress-proxy "" python3 e2e/node/egress-proxy.py "$STATE/egress.sock" \
  "/proc/$(holder_pid node)/ns/net" 10.88.0.0/16 10.244.0.0/16 "$SERVICE_CIDR" "$NODE=$NODE_IP"

say "starting containerd"
sed -e "s#@STATE@#$STATE#g" -e "s#@NODE_BIN@#$NODE_BIN#g" -e "s#@POD_CIDR@#$POD_CIDR#g" \
  e2e/node/containerd.toml >"$STATE/etc/containerd.toml"
mkdir -p "$STATE/etc/cni"
sed -e "s#@POD_CIDR@#$POD_CIDR#g" e2e/node/cni.conflist >"$STATE/etc/cni/10-gpubridge.conflist"
start containerd node env PATH="$NODE_BIN:$PATH" "$NODE_BIN/containerd" --config "$STATE/etc/containerd.toml"
for _ in $(seq 100); do ctr version >/dev/null 2>&1 && break; sleep 0.1; done
ctr version >/dev/null 2>&1 || { cat "$STATE/log/containerd.log" >&2; exit 1; }

say "loading images: pause, CoreDNS, the test workload"
bash e2e/node-images.sh "$NODE_BIN" "$BIN/umoci" "$STATE/images"
for tar in "$STATE"/images/*.tar; do
  ctr images import --base-name "$(cat "${tar%.tar}.name")" "$tar" >/dev/null 2>&1
done

say "starting the kubelet, kube-proxy and kube-router"
sed -e "s#@STATE@#$STATE#g" -e "s#@CGROUP@#$CGROUP#g" -e "s#@DNS_IP@#$DNS_IP#g" -e "s#@PKI@#$PKI#g" \
  e2e/node/kubelet.yaml >"$STATE/etc/kubelet.yaml"
printf 'nameserver %s\n' "$WORLD_IP" >"$STATE/etc/resolv.conf"
start kubelet node "$NODE_BIN/kubelet" --config "$STATE/etc/kubelet.yaml" \
  --kubeconfig "$STATE/pki/kubelet.kubeconfig" --hostname-override "$NODE" --node-ip "$NODE_IP" \
  --node-labels "gpubridge.dev/real-node=true,$GPU_LABELS"
sed -e "s#@STATE@#$STATE#g" -e "s#@NODE@#$NODE#g" e2e/node/kube-proxy.yaml >"$STATE/etc/kube-proxy.yaml"
start kube-proxy node "$NODE_BIN/kube-proxy" --config "$STATE/etc/kube-proxy.yaml"
for _ in $(seq 300); do kubectl get node "$NODE" >/dev/null 2>&1 && break; sleep 0.2; done
# kube-router's firewall reads the node's pod range, which no controller allocates here.
kubectl patch node "$NODE" --type merge -p "{\"spec\":{\"podCIDR\":\"$POD_CIDR\",\"podCIDRs\":[\"$POD_CIDR\"]}}" >/dev/null
start kube-router node env PATH="$NODE_BIN:$PATH" "$NODE_BIN/kube-router" \
  --kubeconfig "$STATE/pki/kube-router.kubeconfig" --hostname-override "$NODE" \
  --run-firewall=true --run-router=false --run-service-proxy=false --enable-cni=false \
  --service-cluster-ip-range "$SERVICE_CIDR" --metrics-port 0 --health-port 0
kubectl wait --for=condition=Ready "node/$NODE" --timeout=120s >/dev/null || {
  tail -30 "$STATE/log/kubelet.log" >&2; exit 1; }

say "starting the simulated GPU device plugin: $GPUS× nvidia.com/gpu"
start gpu-plugin node "$GPUBRIDGE" simulated-gpu-plugin --simulated-gpus "$GPUS" --simulated-seed "$NODE"
for _ in $(seq 150); do
  [ "$(kubectl get node "$NODE" -o jsonpath='{.status.allocatable.nvidia\.com/gpu}')" = "$GPUS" ] && break
  sleep 0.2
done
[ "$(kubectl get node "$NODE" -o jsonpath='{.status.allocatable.nvidia\.com/gpu}')" = "$GPUS" ] || {
  say "the node does not offer $GPUS GPUs"; tail -20 "$STATE/log/gpu-plugin.log" >&2; exit 1; }

say "starting CoreDNS"
kubectl apply -f e2e/node/coredns.yaml >/dev/null
kubectl -n kube-system rollout status deployment/coredns --timeout=120s >/dev/null || {
  kubectl -n kube-system describe pods -l k8s-app=kube-dns >&2; exit 1; }
say "$NODE is up in $((SECONDS - start_time))s: $(kubectl get node "$NODE" --no-headers)"
