#!/usr/bin/env bash
# Installs what vxmesh's demo and tests need on Debian 12 (bookworm), as root; scripts/clean-os.sh
# proves it on a fresh one (a test.sh stage). Other distributions are untested (docs/testing.md).
# Idempotent: packages already present are left alone; apt runs only if one is missing.
set -euo pipefail

PACKAGES=(
  etcd-server etcd-client          # the registry (etcd v3 API)
  iproute2 iputils-ping iptables   # namespaces, links, routes; ping; masquerade rules
  nftables                         # nft: the masquerade rules with EnableNFTables (tests/masq_backends.rs)
  iperf3 jq tcpdump tshark ethtool # throughput checks, JSON, captures (tshark decodes VXLAN), NIC offloads
  protobuf-compiler                # etcd-client's build needs protoc
  libprotobuf-dev                  # ... and the well-known types it imports (google/protobuf/descriptor.proto):
                                   # only a Recommends of protobuf-compiler, which --no-install-recommends skips
  containernetworking-plugins      # reference CNI plugins: bridge, host-local, portmap
  podman runc busybox-static       # a real container runtime for the CNI tests
  shellcheck python3 python3-matplotlib  # script lint; benchmark charts
  openssl                          # certificates for the etcd TLS tests and the secure lab
  build-essential pkg-config       # C toolchain for -sys crates
  vagrant systemd                  # vagrant validate, systemd-analyze verify (vagrant/check.sh)
  debootstrap                      # the clean-OS stage's Debian 12 root filesystem (scripts/clean-os.sh)
)

if [ "$(id -u)" != 0 ]; then
  echo "install-deps: run as root (apt-get)" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian starts etcd.service from the package on systems with systemd; the lab and
# tests run their own etcd on other addresses, so a system etcd does not interfere.
if ! command -v cargo >/dev/null; then
  echo "install-deps: no Rust toolchain: install it from https://rustup.rs (rustup, stable), then re-run" >&2
  exit 1
fi
modprobe tun 2>/dev/null || true
[ -c /dev/net/tun ] || { echo "install-deps: /dev/net/tun missing (kernel tun module)" >&2; exit 1; }
echo "install-deps: ok ($(etcd --version | head -1), $(iperf3 --version | head -1), CNI plugins in /usr/lib/cni)"
