//! vxmesh dataplane.
pub mod wire;
