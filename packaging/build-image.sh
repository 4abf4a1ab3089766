#!/usr/bin/env bash
# The image without a container engine: the Dockerfile's runtime stage built as an OCI layout
# with umoci, from the same parts — the release binaries build-release.sh made, the C runtime they
# link (glibc and libgcc of this Debian machine, as gcr.io/distroless/cc-debian12 carries them),
# NVIDIA's NVRTC as packaging/nvrtc.sh unpacks it (the Dockerfile's nvrtc stage runs the same
# script) with the C++ runtime it links, CA certificates, distroless' users (root, nobody, nonroot
# 65532) — with the labels, environment, user, entrypoint and command read from the Dockerfile
# itself. The runtime stage may hold only what
# this script reproduces: any other instruction stops it, so the two cannot drift apart. The
# binaries are then started inside the image's root filesystem as its user, which proves that it
# holds everything they load.
# Usage: packaging/build-image.sh BINARIES OUT [TAG]   (OUT, an OCI layout, is replaced)
#        packaging/build-image.sh --print-config [DOCKERFILE]   (what would be built, and checks)
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '[build-image] %s\n' "$*" >&2; }
fail() { say "$*"; exit 1; }

# Reads the runtime stage of $1 into user, entrypoint, cmd, copied, nvrtc_sources, nvrtc_dest,
# environment and labels (key=value lines).
read_runtime_stage() {
  local stage from unknown version revision
  # Everything after the last FROM, continuation lines joined.
  stage=$(awk '/^FROM /{buf=""} {buf=buf $0 "\n"} END{printf "%s", buf}' "$1" |
    sed -e ':a' -e '/\\$/N; s/\\\n//; ta')
  from=$(printf '%s\n' "$stage" | sed -n 's/^FROM \([^ ]*\).*/\1/p')
  [ "$from" = "gcr.io/distroless/cc-debian12:nonroot" ] ||
    fail "the runtime stage is FROM $from; this script reproduces gcr.io/distroless/cc-debian12:nonroot"
  # COPY only the release binaries and NVRTC's libraries; ENV only NAME=value.
  unknown=$(printf '%s\n' "$stage" | grep -vE '^(FROM|ARG|LABEL|USER|ENTRYPOINT|CMD) |^#|^[[:space:]]*$' |
    grep -vE '^COPY --from=build( +[^ ]+)+ +/usr/local/bin/$' |
    grep -vE '^COPY --from=nvrtc( +/nvrtc/[^ ]+)+ +/[^ ]+/$' |
    grep -vE '^ENV [A-Za-z_][A-Za-z0-9_]*=[^ ]*$' || true)
  [ -z "$unknown" ] || fail "the Dockerfile's runtime stage has what this script does not reproduce: $unknown"
  user=$(printf '%s\n' "$stage" | sed -n 's/^USER \(.*\)/\1/p')
  entrypoint=$(printf '%s\n' "$stage" | sed -n 's/^ENTRYPOINT \[\(.*\)\]/\1/p' | tr -d '",')
  cmd=$(printf '%s\n' "$stage" | sed -n 's/^CMD \[\(.*\)\]/\1/p' | tr -d '",')
  copied=$(printf '%s\n' "$stage" | sed -n 's|^COPY --from=build \(.*\) /usr/local/bin/$|\1|p')
  nvrtc_sources=$(printf '%s\n' "$stage" | sed -n 's|^COPY --from=nvrtc \(.*\) /[^ ]*/$|\1|p')
  nvrtc_dest=$(printf '%s\n' "$stage" | sed -n 's|^COPY --from=nvrtc .* \(/[^ ]*/\)$|\1|p')
  environment=$(printf '%s\n' "$stage" | sed -n 's/^ENV //p')
  [ -n "$user" ] && [ -n "$entrypoint" ] && [ -n "$copied" ] ||
    fail "the runtime stage lacks USER, ENTRYPOINT or COPY --from=build … /usr/local/bin/"
  # The ARGs as a build without --build-arg gives them, the revision this checkout's.
  version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
  revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
  labels=$(printf '%s\n' "$stage" | sed -n 's/^LABEL //p' |
    sed -e "s/\${VERSION}/$version/g" -e "s/\${REVISION}/$revision/g" |
    grep -oE '[a-z.]+="[^"]*"' | sed 's/="\(.*\)"$/=\1/')
}

if [ "${1:-}" = "--print-config" ]; then
  read_runtime_stage "${2:-Dockerfile}"
  printf 'user %s\nentrypoint %s\ncmd %s\ncopy %s\n' "$user" "$entrypoint" "$cmd" "$(echo $copied)"
  printf 'nvrtc %s -> %s\n' "$(echo $nvrtc_sources)" "$nvrtc_dest"
  printf '%s\n' "$environment" | sed 's/^/env /'
  printf '%s\n' "$labels" | sed 's/^/label /'
  exit 0
fi

binaries=${1:?usage: $0 BINARIES OUT [TAG]}
out=${2:?usage: $0 BINARIES OUT [TAG]}
tag=${3:-latest}
read_runtime_stage Dockerfile
umoci=${UMOCI:-$(bash e2e/build-binaries.sh)/umoci}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rm -rf "$out"
"$umoci" init --layout "$out"
"$umoci" new --image "$out:$tag"
"$umoci" unpack --image "$out:$tag" "$work/bundle" >/dev/null
root="$work/bundle/rootfs"

for path in $copied; do
  name=$(basename "$path")
  [ -x "$binaries/$name" ] || fail "$binaries/$name is missing: run packaging/build-release.sh $binaries first"
  install -D -m 0755 "$binaries/$name" "$root/usr/local/bin/$name"
  # The shared objects it links, where the dynamic loader looks for them.
  for lib in $(ldd "$binaries/$name" | awk '/=> \//{print $3} /^\t\/[^ ]*ld-linux/{print $1}'); do
    install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
  done
done
# NVRTC: the nvrtc stage's /nvrtc is packaging/nvrtc.sh's folder here.
nvrtc_dir=$(bash packaging/nvrtc.sh)
nvrtc_dir=${nvrtc_dir%/nvidia/cuda_nvrtc/lib}
for path in $nvrtc_sources; do
  install -D -m 0644 "$nvrtc_dir/${path#/nvrtc/}" "$root$nvrtc_dest$(basename "$path")"
  for lib in $(ldd "$nvrtc_dir/${path#/nvrtc/}" | awk '/=> \//{print $3}'); do
    install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
  done
done
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
mkdir -p "$root/etc" "$root/tmp" "$root/root" "$root/home/nonroot"
chmod 1777 "$root/tmp"
chown 65532:65532 "$root/home/nonroot"
printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
  'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$root/etc/passwd"
printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'nonroot:x:65532:' >"$root/etc/group"

# Each binary starts in the image, as the image's user.
for path in $copied; do
  chroot --userspec="$user" "$root" "/usr/local/bin/$(basename "$path")" --version >/dev/null ||
    fail "/usr/local/bin/$(basename "$path") does not start inside the image as $user"
done
# The probe's CUDA kernels compile inside the image, with its environment (NVRTC's path).
env $environment chroot --userspec="$user" "$root" /usr/local/bin/gpubridge-sidecar probe-engine \
  --require nvrtc >&2 || fail "NVRTC does not compile the probe's kernels inside the image"

"$umoci" repack --image "$out:$tag" "$work/bundle"
config=(--config.user "$user" --clear=config.entrypoint --clear=config.cmd)
for word in $entrypoint; do config+=(--config.entrypoint "$word"); done
for word in $cmd; do config+=(--config.cmd "$word"); done
for variable in $environment; do config+=(--config.env "$variable"); done
while IFS= read -r label; do config+=(--config.label "$label"); done <<<"$labels"
"$umoci" config --image "$out:$tag" "${config[@]}"
"$umoci" gc --layout "$out"
say "$out:$tag: $(du -sh "$out" | cut -f1), user $user, $entrypoint $cmd"
