#!/usr/bin/env bash
# The demo: installs what is needed, builds vxmesh, and brings up a 3-node cluster
# of network namespaces on this machine (etcd, vxmeshd per node, pods made by the
# vxmesh CNI plugin), then proves all-pairs cross-node pod ping and runs iperf3, and
# finally runs a real podman container on node 1 that reaches pods on nodes 2 and 3.
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
./scripts/lab.sh up
echo
if ./scripts/lab.sh podman 1; then
  echo "demo: done. The cluster is still up (see above how to explore it); ./scripts/lab.sh down removes it."
else
  echo "demo: the podman step failed (see above); the cluster itself works. ./scripts/lab.sh down removes it." >&2
  exit 1
fi
