#!/usr/bin/env bash
# The real node's images, built without a container engine as OCI layouts (umoci) and written
# as tarballs that `ctr images import` loads, each beside a .name file (its name without tag):
#   registry.k8s.io/pause:3.10.2   the pod sandbox, from Kubernetes' pause.c (build-node.sh)
#   gpubridge.test/coredns:e2e      CoreDNS (build-node.sh)
#   gpubridge.test/busybox:e2e      Debian's static busybox: a shell, nc and httpd for test
#                                   workloads, and a page to serve (/www/index.html)
# Every image runs as 65532 unless its pod says otherwise.
# Usage: e2e/node-images.sh NODE_BIN UMOCI OUT
set -euo pipefail
node_bin=$1 umoci=$2 out=$3
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

image() { # file name, name, tag, staged root, entrypoint|cmd, its arguments...
  local file=$1 name=$2 tag=$3 root=$4 kind=$5 layout="$work/$1"; shift 5
  "$umoci" init --layout "$layout"
  "$umoci" new --image "$layout:$tag"
  "$umoci" insert --image "$layout:$tag" "$root" /
  local entry=()
  for arg in "$@"; do entry+=("--config.$kind" "$arg"); done
  "$umoci" config --image "$layout:$tag" --config.user 65532:65532 "${entry[@]}"
  tar -C "$layout" -cf "$out/$file.tar" .
  echo "$name" >"$out/$file.name"
}

mkdir -p "$work/pause-root" "$work/coredns-root" "$work/busybox-root/bin" "$work/busybox-root/www"
install -m 0755 "$node_bin/pause" "$work/pause-root/pause"
image pause registry.k8s.io/pause 3.10.2 "$work/pause-root" entrypoint /pause
install -m 0755 "$node_bin/coredns" "$work/coredns-root/coredns"
image coredns gpubridge.test/coredns e2e "$work/coredns-root" entrypoint /coredns
install -m 0755 /bin/busybox "$work/busybox-root/bin/busybox"
echo "hello from the lease" >"$work/busybox-root/www/index.html"
for applet in sh cat echo sleep nc nslookup grep ls env id printf wc head tr cut seq date true false kill httpd; do
  ln -s busybox "$work/busybox-root/bin/$applet"
done
image busybox gpubridge.test/busybox e2e "$work/busybox-root" cmd /bin/sh
