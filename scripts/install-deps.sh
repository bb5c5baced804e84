#!/usr/bin/env bash
# Installs what sealift's tests and lab need on a fresh Debian 12 machine
# (as root). Idempotent: a second run installs nothing.
set -euo pipefail

pkgs=(
  qemu-system-x86 busybox-static linux-image-amd64 kmod cpio   # guests, full-kernel tests
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-dev libvirt-clients  # libvirt backend
  iproute2 nftables conntrack iputils-ping tcpdump iperf3 wireguard-tools
  gcc pkg-config                                               # cgo for libvirt.org/go/libvirt
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v go >/dev/null || { echo "install-deps: go is not on PATH (want Go 1.26)" >&2; exit 1; }
go mod download
echo "install-deps: ok"
