#!/usr/bin/env bash
# Builds the real node's parts from the Go module proxy and caches them outside git, keyed by
# version: kubelet and kube-proxy (the Kubernetes tools module build-binaries.sh resolves),
# containerd v2 with its runc shim and ctr, runc (cgo, seccomp), kube-router (its NetworkPolicy
# firewall only), CoreDNS, and the pause image's binary compiled from the Kubernetes module's
# pause.c. The CNI plugins, nftables (kube-proxy's nft), iptables, ipset and libseccomp come from
# Debian and are installed when missing. Prints the folder. Idempotent: a second run only checks
# the cache.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION="${K8S_VERSION:-1.37.2}"
CONTAINERD_VERSION="${CONTAINERD_VERSION:-2.4.2}"
RUNC_VERSION="${RUNC_VERSION:-1.5.3}"
KUBE_ROUTER_VERSION="${KUBE_ROUTER_VERSION:-2.1.0}"
COREDNS_VERSION="${COREDNS_VERSION:-1.14.7}"
CACHE="${GPUBRIDGE_CACHE:-$HOME/.cache/gpubridge}"
NODE_BIN="$CACHE/bin/node-k8s-$K8S_VERSION-containerd-$CONTAINERD_VERSION-runc-$RUNC_VERSION-kube-router-$KUBE_ROUTER_VERSION-coredns-$COREDNS_VERSION"
export GOFLAGS="${GOFLAGS:--mod=mod}"
export GOCACHE="${GOCACHE:-$CACHE/go-build}" GOMODCACHE="${GOMODCACHE:-$CACHE/go-mod}"
say() { printf '[build-node] %s\n' "$*" >&2; }
mkdir -p "$NODE_BIN"

# Debian packages the node uses as they are.
packages=()
for pair in iptables:iptables ipset:ipset conntrack:conntrack nsenter:util-linux \
  nft:nftables /usr/lib/cni/bridge:containernetworking-plugins /usr/include/seccomp.h:libseccomp-dev gcc:gcc socat:socat openssl:openssl /bin/busybox:busybox-static; do
  probe=${pair%%:*}
  if [ "${probe#/}" != "$probe" ]; then [ -e "$probe" ] && continue; else command -v "$probe" >/dev/null && continue; fi
  packages+=("${pair#*:}")
done
if [ ${#packages[@]} -gt 0 ]; then
  say "installing ${packages[*]} from Debian"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${packages[@]}" >/dev/null
fi

built() { for b in "$@"; do [ -x "$NODE_BIN/$b" ] || return 1; done; }
timed() { # name, command...
  local name=$1 start=$SECONDS; shift
  say "$name: building (cold builds take minutes)"
  "$@"
  say "$name: built in $((SECONDS - start))s"
}

# kubelet and kube-proxy, from the same tools module as the control plane (build-binaries.sh
# resolves it; this script runs after it).
k8s_dir="$CACHE/src/k8s-$K8S_VERSION"
[ -f "$k8s_dir/go.sum" ] || { say "run e2e/build-binaries.sh first ($k8s_dir is missing)"; exit 1; }
v="v$K8S_VERSION"
k8s_ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$v -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${K8S_VERSION#1.} -X k8s.io/client-go/pkg/version.gitVersion=$v -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
built kubelet kube-proxy || timed "kubelet, kube-proxy" \
  env CGO_ENABLED=0 sh -c "cd '$k8s_dir' && go build -trimpath -ldflags '$k8s_ldflags' -o '$NODE_BIN/' k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy"

# Modules built inside their own downloaded source, as upstream's Makefiles do (their go.mod may
# carry replace directives, which `go install` refuses).
module_dir() { go mod download -json "$1@v$2" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p'; }
build_in_module() { # module, version, cgo, tags, ldflags, packages...
  local module=$1 version=$2 cgo=$3 tags=$4 ldflags=$5 dir; shift 5
  dir=$(module_dir "$module" "$version")
  (cd "$dir" && CGO_ENABLED=$cgo GOFLAGS=-mod=readonly go build -trimpath -tags "$tags" \
    -ldflags "-s -w $ldflags" -o "$NODE_BIN/" "$@")
}

built containerd containerd-shim-runc-v2 ctr || timed "containerd v$CONTAINERD_VERSION" \
  build_in_module github.com/containerd/containerd/v2 "$CONTAINERD_VERSION" 0 "no_btrfs no_devmapper no_zfs" \
  "-X github.com/containerd/containerd/v2/version.Version=v$CONTAINERD_VERSION" \
  ./cmd/containerd ./cmd/containerd-shim-runc-v2 ./cmd/ctr
built runc || timed "runc v$RUNC_VERSION" \
  build_in_module github.com/opencontainers/runc "$RUNC_VERSION" 1 seccomp \
  "-X main.version=$RUNC_VERSION" .
built kube-router || timed "kube-router v$KUBE_ROUTER_VERSION" \
  build_in_module github.com/cloudnativelabs/kube-router/v2 "$KUBE_ROUTER_VERSION" 0 "" \
  "-X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=v$KUBE_ROUTER_VERSION" ./cmd/kube-router
built coredns || timed "CoreDNS v$COREDNS_VERSION" \
  build_in_module github.com/coredns/coredns "$COREDNS_VERSION" 0 "" "" .

# The pause container's binary, as Kubernetes builds it: pause.c, static.
if ! built pause; then
  pause_c=$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')/build/pause/linux/pause.c
  timed pause gcc -Os -Wall -Werror -static -DVERSION="v$K8S_VERSION-gpubridge" -o "$NODE_BIN/pause" "$pause_c"
fi

echo "$NODE_BIN"
