#!/usr/bin/env bash
# Installs what vxmesh's demo and tests need on Debian 12 (bookworm) or 13 (trixie) and Ubuntu
# 24.04 (noble), as root; scripts/clean-os.sh proves it on a fresh one of each (test.sh stages;
# docs/testing.md). Idempotent: packages already present are left alone; apt runs only if one is
# missing.
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
  systemd                          # systemd-analyze verify of the units (vagrant/check.sh)
  debootstrap                      # the clean-OS stage's root filesystems (scripts/clean-os.sh)
)
# Installed when the distribution has them, else named with what is lost: Ubuntu has no vagrant
# package since 24.04 (HashiCorp's licence change); vagrant/check.sh then skips `vagrant validate`.
OPTIONAL=(
  vagrant                          # vagrant validate (vagrant/check.sh)
)

if [ "$(id -u)" != 0 ]; then
  echo "install-deps: run as root (apt-get)" >&2
  exit 1
fi

# Both read the whole output before matching: with pipefail, `cmd | grep -q` fails whenever grep
# stops reading before cmd has written everything (cmd dies of SIGPIPE, status 141).
installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }
# Whether apt's package lists (as they are now) offer a version of package $1.
available() {
  local policy
  policy=$(LC_ALL=C apt-cache policy "$1" 2>/dev/null) || return 1
  [[ $policy =~ (^|$'\n')"  Candidate: "[^\(] ]]
}

export DEBIAN_FRONTEND=noninteractive
missing=()
for p in "${PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
optional=()
for p in "${OPTIONAL[@]}"; do installed "$p" || optional+=("$p"); done
updated=0
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  apt-get update -qq
  updated=1
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
for p in ${optional[@]+"${optional[@]}"}; do
  # A machine whose apt has never fetched its package lists knows of no package at all.
  if ! available "$p" && [ "$updated" = 0 ] && ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    apt-get update -qq
    updated=1
  fi
  if available "$p"; then
    echo "install-deps: installing $p"
    apt-get install -y -qq --no-install-recommends "$p" >/dev/null
  else
    echo "install-deps: note: this distribution has no '$p' package; skipped (vagrant/check.sh skips 'vagrant validate' without it; HashiCorp's apt repository has it: https://developer.hashicorp.com/vagrant/install)"
  fi
done

# Debian starts etcd.service from the package on systems with systemd; the lab and
# tests run their own etcd on other addresses, so a system etcd does not interfere.
if ! command -v cargo >/dev/null; then
  echo "install-deps: no Rust toolchain: install it from https://rustup.rs (rustup, stable), then re-run" >&2
  exit 1
fi
modprobe tun 2>/dev/null || true
[ -c /dev/net/tun ] || { echo "install-deps: /dev/net/tun missing (kernel tun module)" >&2; exit 1; }
echo "install-deps: ok ($(etcd --version | head -1), $(iperf3 --version | head -1), CNI plugins in /usr/lib/cni)"
