//! vxmesh dataplane.
