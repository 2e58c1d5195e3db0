//! vxmesh control plane.
