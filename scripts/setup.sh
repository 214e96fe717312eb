#!/usr/bin/env bash
# One-time (idempotent, quick when done) set-up of everything xrouter needs on a
# fresh Debian 12 machine of this kind: Debian packages, the nightly toolchain
# with rust-src, bpf-linker linked against the nightly's own LLVM, and bpffs.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    log "must run as root (network namespaces, iptables and BPF need it)"
    exit 1
  fi
}

# Debian packages the project and its tests use.
PKGS=(iproute2 iptables nftables conntrack bpftool tcpdump iputils-ping iputils-arping ethtool socat procps kmod)
BINS=(ip iptables-restore nft conntrack bpftool tcpdump ping arping ethtool socat sysctl modprobe)

packages() {
  local missing=0 b
  for b in "${BINS[@]}"; do
    command -v "$b" >/dev/null 2>&1 || { missing=1; break; }
  done
  if [ "$missing" -eq 1 ]; then
    log "installing Debian packages: ${PKGS[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${PKGS[@]}" >/dev/null
  fi
}

nightly() {
  if ! rustup toolchain list | grep -q '^nightly'; then
    log "installing the nightly toolchain"
    rustup toolchain install nightly --profile minimal --component rust-src
  fi
  if ! rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then
    log "adding rust-src to the nightly"
    rustup component add rust-src --toolchain nightly
  fi
}

bpf_linker() {
  # bpf-linker must use the same LLVM major as the nightly; the default build
  # picks a newer LLVM and fails to link, so link it to the nightly's libLLVM.
  local sysroot major stamp prefix lib
  sysroot=$(rustc +nightly --print sysroot)
  major=$(rustc +nightly -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
  prefix="${XROUTER_LLVM_PREFIX:-$HOME/.local/xrouter-llvm}"
  stamp="$prefix/stamp"
  lib=$(ls "$sysroot"/lib/libLLVM.so.* | head -1)
  if command -v bpf-linker >/dev/null 2>&1 && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$lib" ]; then
    return
  fi
  log "building bpf-linker against $lib (LLVM $major, about 80 s)"
  mkdir -p "$prefix/lib"
  ln -sf "$lib" "$prefix/lib/libLLVM.so"
  LLVM_PREFIX="$prefix" cargo install bpf-linker --locked --force \
    --no-default-features --features "llvm-$major"
  echo "$lib" > "$stamp"
}

bpffs() {
  if ! mountpoint -q /sys/fs/bpf; then
    log "mounting bpffs on /sys/fs/bpf"
    mount -t bpf bpf /sys/fs/bpf
  fi
}

need_root
packages
nightly
bpf_linker
bpffs
log "ready"
