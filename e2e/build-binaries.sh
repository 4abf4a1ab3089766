#!/usr/bin/env bash
# Builds the real Kubernetes control plane used by e2e tests from the Go module proxy, and caches
# it outside git, keyed by version: kube-apiserver, kube-controller-manager, kube-scheduler and
# kubectl from k8s.io/kubernetes; etcd from go.etcd.io/etcd; kwok and kwokctl; helm; Prometheus
# and promtool (for the dashboard and metrics checks); umoci (the images); dashboard-schema and
# Checkov (the dashboard's schema, the manifests' and the Dockerfile's security scan); CometBFT
# (the consensus engine the network's validators run).
# Idempotent: a second run with the same versions only checks the cache.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-0.8.0}"
HELM_VERSION="${HELM_VERSION:-4.3.1}"
# Prometheus v3.x publishes its Go module as v0.3xx.y.
PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-0.316.0}"
UMOCI_VERSION="${UMOCI_VERSION:-0.6.0}"
CHECKOV_VERSION="${CHECKOV_VERSION:-3.3.30}"
# The maintained 0.38 line (ABCI 2.0); never @latest, which resolves to a stale v1.0.1.
COMETBFT_VERSION="${COMETBFT_VERSION:-0.38.26}"
CACHE="${GPUBRIDGE_CACHE:-$HOME/.cache/gpubridge}"
BIN="$CACHE/bin/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION-helm-$HELM_VERSION"
export GOFLAGS="${GOFLAGS:--mod=mod}" CGO_ENABLED=0
export GOCACHE="${GOCACHE:-$CACHE/go-build}" GOMODCACHE="${GOMODCACHE:-$CACHE/go-mod}"

say() { printf '[build-binaries] %s\n' "$*" >&2; }
mkdir -p "$BIN"

build_module() { # name, module dir, packages...
  local name=$1 dir=$2; shift 2
  local missing=0
  for pkg in "$@"; do [ -x "$BIN/$(basename "$pkg")" ] || missing=1; done
  if [ "$missing" = 0 ]; then say "$name: cached"; return; fi
  say "$name: building $* (cold builds take minutes)"
  local start=$SECONDS
  (cd "$dir" && go build -trimpath -ldflags "${LDFLAGS:-} -s -w" -o "$BIN/" "$@")
  say "$name: built in $((SECONDS - start))s"
}

# Kubernetes: a tools module that requires k8s.io/kubernetes and replaces every staging module
# (upstream's own go.mod replaces them with ./staging/...) with its published v0.Y.Z.
k8s_dir="$CACHE/src/k8s-$K8S_VERSION"
if [ ! -f "$k8s_dir/go.sum" ]; then
  say "kubernetes v$K8S_VERSION: resolving modules"
  mkdir -p "$k8s_dir"
  upstream_mod=$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  {
    echo "module gpubridge.dev/e2e/k8s-tools"
    echo
    echo "go $(sed -n 's/^go //p' "$upstream_mod")"
    echo
    echo "require k8s.io/kubernetes v$K8S_VERSION"
    echo
    echo "replace ("
    sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\t\1 => \1 v0.'"${K8S_VERSION#1.}"'#p' "$upstream_mod"
    echo ")"
  } > "$k8s_dir/go.mod"
  printf 'package tools\n\nimport (\n\t_ "k8s.io/kubernetes/cmd/kube-apiserver/app"\n)\n' > "$k8s_dir/tools.go"
  (cd "$k8s_dir" && go mod tidy >/dev/null 2>&1 || go mod download)
  touch "$k8s_dir/go.sum"
fi
v="v$K8S_VERSION"
LDFLAGS="-X k8s.io/component-base/version.gitVersion=$v -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${K8S_VERSION#1.} -X k8s.io/client-go/pkg/version.gitVersion=$v -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z" \
  build_module kubernetes "$k8s_dir" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl

# Modules without replace directives install straight from the proxy, each with its own
# dependency versions.
install_tool() { # name, package@version, binary
  if [ -x "$BIN/$3" ]; then say "$1: cached"; return; fi
  say "$1: building $2"
  local start=$SECONDS
  GOBIN="$BIN" go install -trimpath -ldflags "${LDFLAGS:-} -s -w" "$2"
  say "$1: built in $((SECONDS - start))s"
}
# etcd's server module carries replace directives, so it is built from a small module of ours
# whose main is etcd's own entry point.
etcd_dir="$CACHE/src/etcd-$ETCD_VERSION"
if [ ! -f "$etcd_dir/go.sum" ]; then
  say "etcd v$ETCD_VERSION: resolving modules"
  mkdir -p "$etcd_dir/etcd"
  printf 'module gpubridge.dev/e2e/etcd-tools\n\ngo 1.24\n' > "$etcd_dir/go.mod"
  printf 'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\nfunc main() { etcdmain.Main(os.Args) }\n' > "$etcd_dir/etcd/main.go"
  (cd "$etcd_dir" && go get "go.etcd.io/etcd/server/v3@v$ETCD_VERSION" && go mod tidy)
fi
LDFLAGS="" build_module etcd "$etcd_dir" ./etcd
LDFLAGS="-X sigs.k8s.io/kwok/pkg/consts.Version=v$KWOK_VERSION -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=v$K8S_VERSION" \
  install_tool kwok "sigs.k8s.io/kwok/cmd/kwok@v$KWOK_VERSION" kwok
LDFLAGS="-X sigs.k8s.io/kwok/pkg/consts.Version=v$KWOK_VERSION -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=v$K8S_VERSION" \
  install_tool kwokctl "sigs.k8s.io/kwok/cmd/kwokctl@v$KWOK_VERSION" kwokctl
install_tool helm "helm.sh/helm/v${HELM_VERSION%%.*}/cmd/helm@v$HELM_VERSION" helm

# Prometheus in a folder of its own version, linked into $BIN, so that changing it rebuilds only
# it. remove_all_sd leaves out every service discovery but static targets: nothing is needed.
prom_bin="$CACHE/bin/prometheus-$PROMETHEUS_VERSION"
for tool in prometheus promtool; do
  if [ ! -x "$prom_bin/$tool" ]; then
    say "$tool: building github.com/prometheus/prometheus/cmd/$tool@v$PROMETHEUS_VERSION"
    start=$SECONDS
    GOBIN="$prom_bin" go install -trimpath -tags remove_all_sd -ldflags "-s -w" \
      "github.com/prometheus/prometheus/cmd/$tool@v$PROMETHEUS_VERSION"
    say "$tool: built in $((SECONDS - start))s"
  else
    say "$tool: cached"
  fi
  ln -sfn "$prom_bin/$tool" "$BIN/$tool"
done

# CometBFT, in a folder of its own version like Prometheus.
cometbft_bin="$CACHE/bin/cometbft-$COMETBFT_VERSION"
if [ ! -x "$cometbft_bin/cometbft" ]; then
  say "cometbft: building github.com/cometbft/cometbft/cmd/cometbft@v$COMETBFT_VERSION"
  start=$SECONDS
  GOBIN="$cometbft_bin" go install -trimpath -ldflags "-s -w" \
    "github.com/cometbft/cometbft/cmd/cometbft@v$COMETBFT_VERSION"
  say "cometbft: built in $((SECONDS - start))s"
else
  say "cometbft: cached"
fi
ln -sfn "$cometbft_bin/cometbft" "$BIN/cometbft"

# umoci, in a folder of its own version like Prometheus. Its module carries a replace directive,
# which `go install` refuses, so it is built inside its own module as downloaded.
umoci_bin="$CACHE/bin/umoci-$UMOCI_VERSION"
if [ ! -x "$umoci_bin/umoci" ]; then
  say "umoci: building github.com/opencontainers/umoci@v$UMOCI_VERSION"
  start=$SECONDS
  umoci_dir=$(go mod download -json "github.com/opencontainers/umoci@v$UMOCI_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  (cd "$umoci_dir" && GOFLAGS=-mod=readonly go build -trimpath \
    -ldflags "-s -w -X main.version=$UMOCI_VERSION" -o "$umoci_bin/umoci" ./cmd/umoci)
  say "umoci: built in $((SECONDS - start))s"
else
  say "umoci: cached"
fi
ln -sfn "$umoci_bin/umoci" "$BIN/umoci"

# dashboard-schema (ours, e2e/dashboard-schema): Grafana's dashboard schema as the Apache-licensed
# grafana-foundation-sdk generates it, for the dashboard's check. Cached by its source's hash.
schema_src="$(cd "$(dirname "$0")" && pwd)/dashboard-schema"
schema_bin="$CACHE/bin/dashboard-schema-$(cat "$schema_src"/go.mod "$schema_src"/go.sum "$schema_src"/*.go | sha256sum | cut -c1-12)"
if [ ! -x "$schema_bin/dashboard-schema" ]; then
  say "dashboard-schema: building with github.com/grafana/grafana-foundation-sdk/go"
  start=$SECONDS
  (cd "$schema_src" && GOFLAGS=-mod=readonly go build -trimpath -ldflags "-s -w" -o "$schema_bin/dashboard-schema" .)
  say "dashboard-schema: built in $((SECONDS - start))s"
else
  say "dashboard-schema: cached"
fi
ln -sfn "$schema_bin/dashboard-schema" "$BIN/dashboard-schema"

# Checkov (Apache-2.0, from PyPI into a virtual environment): the Kubernetes and Dockerfile
# security scanner the chart's and the Dockerfile's annotations are written for.
checkov_dir="$CACHE/bin/checkov-$CHECKOV_VERSION"
if [ ! -x "$checkov_dir/bin/checkov" ]; then
  say "checkov: installing $CHECKOV_VERSION"
  start=$SECONDS
  rm -rf "$checkov_dir"
  python3 -m venv "$checkov_dir"
  "$checkov_dir/bin/pip" install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION"
  say "checkov: installed in $((SECONDS - start))s"
else
  say "checkov: cached"
fi
ln -sfn "$checkov_dir/bin/checkov" "$BIN/checkov"

echo "$BIN"
