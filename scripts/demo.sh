#!/usr/bin/env bash
# The demo: installs what is needed, builds vxmesh, and brings up a 3-node cluster
# of network namespaces on this machine (etcd, vxmeshd per node, pods made by the
# vxmesh CNI plugin), then proves all-pairs cross-node pod ping and runs iperf3.
# The cluster stays up to explore; `scripts/lab.sh down` removes it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/install-deps.sh
echo "demo: building release binaries (first build takes a few minutes)"
cargo build --release --workspace --bins
if ip netns list 2>/dev/null | grep -q "^${VXLAB_PREFIX:-vxlab}-sw\b"; then
  echo "demo: a lab named ${VXLAB_PREFIX:-vxlab} is already up; recreating it"
  ./scripts/lab.sh down
fi
exec ./scripts/lab.sh up
