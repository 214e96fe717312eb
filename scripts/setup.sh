#!/usr/bin/env bash
# One-time (idempotent, quick when done) set-up of everything xrouter needs on a
# fresh Debian 12 machine of this kind: Debian packages, the nightly toolchain
# with rust-src, bpf-linker linked against the nightly's own LLVM, bpffs, and
# the kit of the agent tests: RabbitMQ (its Debian service kept stopped: the
# tests run their own brokers inside their namespaces) and a Python venv with
# oslo.messaging for the stand-in neutron-server (tests/neutron/); Open vSwitch
# (the tests run a private one inside their namespaces) and haproxy, their
# Debian services kept stopped and disabled too.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    log "must run as root (network namespaces, iptables and BPF need it)"
    exit 1
  fi
}

# Debian packages the project and its tests use.
PKGS=(iproute2 iptables nftables conntrack bpftool tcpdump iputils-ping iputils-arping ethtool socat procps kmod curl openssl systemd util-linux
  rabbitmq-server python3-venv openvswitch-switch haproxy wrk iperf3 debootstrap systemd-container)
BINS=(ip iptables-restore nft conntrack bpftool tcpdump ping arping ethtool socat sysctl modprobe curl openssl systemd-analyze journalctl /lib/systemd/systemd-journald setpriv unshare
  /usr/lib/rabbitmq/bin/rabbitmq-server epmd /usr/lib/python3.11/ensurepip/__init__.py
  ovs-vsctl ovsdb-server ovs-vswitchd ovsdb-tool ovs-ofctl /usr/share/openvswitch/vswitch.ovsschema haproxy wrk iperf3 debootstrap systemd-nspawn)

packages() {
  local missing=0 b own_policy=0
  for b in "${BINS[@]}"; do
    if [ "${b#/}" != "$b" ]; then
      [ -e "$b" ] || { missing=1; break; }
    else
      command -v "$b" >/dev/null 2>&1 || { missing=1; break; }
    fi
  done
  if [ "$missing" -eq 1 ]; then
    log "installing Debian packages: ${PKGS[*]}"
    # policy-rc.d exit 101: no package may start its service (rabbitmq-server
    # and epmd would otherwise listen in the root namespace, Open vSwitch
    # run a switch there, haproxy listen).
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
      chmod +x /usr/sbin/policy-rc.d
      own_policy=1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${PKGS[@]}" >/dev/null
    [ "$own_policy" -eq 0 ] || rm -f /usr/sbin/policy-rc.d
  fi
}

# The tests start brokers of their own inside their namespaces; the Debian
# service must never run in the root namespace (nothing of the tests may
# listen there). Disabled under systemd (its epmd socket unit too); its
# processes, if any (user rabbitmq or epmd), are stopped by pid.
no_root_broker() {
  local pid
  if [ -d /run/systemd/system ]; then
    if systemctl is-enabled --quiet rabbitmq-server 2>/dev/null ||
      systemctl is-active --quiet rabbitmq-server epmd.socket epmd 2>/dev/null; then
      log "disabling the rabbitmq-server and epmd services"
      systemctl disable --now rabbitmq-server epmd.socket epmd >/dev/null 2>&1 || true
    fi
  elif [ -x /etc/init.d/rabbitmq-server ] && ls /etc/rc2.d/S*rabbitmq-server >/dev/null 2>&1; then
    log "disabling the rabbitmq-server init script"
    update-rc.d rabbitmq-server disable >/dev/null 2>&1 || true
  fi
  for pid in $(pgrep -u rabbitmq,epmd 2>/dev/null || true); do
    log "stopping process $pid ($(cat "/proc/$pid/comm" 2>/dev/null)) of the Debian broker"
    kill "$pid" 2>/dev/null || true
  done
}

# Open vSwitch and haproxy: the tests start their own (OVS in each test's
# node namespace, with its own database and sockets); the Debian services
# must neither run nor start at boot. Disabled (systemd or init scripts);
# their processes, if any, stopped by pid.
no_root_services() {
  local svc pid
  for svc in openvswitch-switch haproxy; do
    if [ -d /run/systemd/system ]; then
      if systemctl is-enabled --quiet "$svc" 2>/dev/null || systemctl is-active --quiet "$svc" 2>/dev/null; then
        log "disabling the $svc service"
        systemctl disable --now "$svc" >/dev/null 2>&1 || true
      fi
    elif [ -x "/etc/init.d/$svc" ] && ls /etc/rc2.d/S*"$svc" >/dev/null 2>&1; then
      log "disabling the $svc init script"
      update-rc.d "$svc" disable >/dev/null 2>&1 || true
    fi
  done
  # The Debian services' own pidfiles only: a test's OVS keeps its pidfile
  # in its own directory, and is left alone.
  for pid in $(cat /run/openvswitch/ovsdb-server.pid /run/openvswitch/ovs-vswitchd.pid \
    /run/haproxy.pid 2>/dev/null || true); do
    if kill -0 "$pid" 2>/dev/null; then
      log "stopping process $pid ($(cat "/proc/$pid/comm" 2>/dev/null)) of a Debian service"
      kill "$pid" 2>/dev/null || true
    fi
  done
}

# A minimal Debian 12 with systemd, for the package test
# (tests/tests/package.rs): it installs xrouter's .deb there and boots it
# with systemd-nspawn, without network. So the package's dependencies
# (DEPENDS in xtask/src/deb.rs) are downloaded here, with the archive's
# lists: apt resolves them offline there as on a node. About a minute,
# once per machine (a stamp names the dependencies).
ROOTFS="${XROUTER_TEST_ROOTFS:-/var/cache/xrouter-tests/bookworm}"
ROOTFS_DEPS=(iproute2 iptables conntrack ethtool libgcc-s1)

rootfs() {
  local stamp
  stamp="$ROOTFS.ready-$(printf '%s ' "${ROOTFS_DEPS[@]}" | sha256sum | cut -c1-12)"
  [ -e "$stamp" ] && return
  log "building a Debian 12 root for the package test in $ROOTFS (about a minute)"
  rm -rf "$ROOTFS" "$ROOTFS.tmp" "$ROOTFS".ready-*
  mkdir -p "$(dirname "$ROOTFS")"
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus bookworm "$ROOTFS.tmp" \
    http://deb.debian.org/debian >/dev/null
  chroot "$ROOTFS.tmp" apt-get update -qq
  chroot "$ROOTFS.tmp" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -qq -y --download-only "${ROOTFS_DEPS[@]}" >/dev/null
  mv "$ROOTFS.tmp" "$ROOTFS"
  touch "$stamp"
}

# The Python venv of the stand-in neutron-server and its notifier
# (tests/neutron/*.py), of Neutron's own metadata agent the tests run, and
# of the benchmarks against Neutron's code: Debian's python3 with the pinned
# tests/neutron/requirements.txt (neutron, oslo.messaging and their
# dependencies, as pip resolved them; regenerate with `pip freeze` from a
# fresh venv after `pip install neutron`; about 40 s to build). Installed only
# when that file changes (a stamp names its hash). The tests find it at
# $XROUTER_VENV, default /opt/xrouter-venv.
VENV="${XROUTER_VENV:-/opt/xrouter-venv}"

venv() {
  local req hash stamp
  req="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/neutron/requirements.txt"
  hash=$(sha256sum "$req" | cut -d' ' -f1)
  # One stamp per requirements file installed: checkouts of other versions
  # of the project share the venv without rebuilding it in turn (pip only
  # adds or changes what the pins say).
  stamp="$VENV/.installed-$hash"
  if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ]; then
    return
  fi
  log "installing $req into the Python venv $VENV"
  [ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-input -r "$req"
  touch "$stamp"
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
no_root_broker
no_root_services
venv
rootfs
nightly
bpf_linker
bpffs
log "ready"
