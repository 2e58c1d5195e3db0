//! vxmesh's CNI plugin (binary `vxmesh`): flannel's model, delegating to `bridge` + `host-local`.
//!
//! A runtime executes the plugin with CNI_* environment variables and a JSON netconf on stdin.
//! The plugin reads the node's subnet from flannel's `subnet.env` (written by vxmeshd), renders
//! a delegate config (by default a `bridge` with `host-local` IPAM over that subnet), saves it
//! per attachment, runs the delegate found on CNI_PATH and prints its result in the requested
//! spec version. See docs/cni.md for installation and operation.
//!
//! Components — pure (no I/O):
//! - [`version`]: spec versions and what each allows; delegate version negotiation.
//! - [`env`]: the CNI_* environment, validated.
//! - [`netconf`]: the netconf on stdin, validated, errors naming the field.
//! - [`delegate`]: rendering the delegate's config.
//!
//! flannel's subnet.env (the node's subnet, network, MTU, masquerade flag) is read with the
//! `vxmesh-subnet-env` crate, the model vxmeshd writes it with.
//! - [`result`]: the result model and conversion between spec versions.
//! - [`error`]: the CNI error object and codes.
//!
//! Shell (files, processes, namespaces):
//! - [`state`]: per-attachment state files under a locked data directory.
//! - [`exec`]: finding and running the delegate.
//! - [`flannel`]: state files flannel's CNI plugin left (for a node migrated from it).
//! - [`netns`]: looking into the container's network namespace.
//! - [`plugin`]: the six operations, tying it together.

pub mod delegate;
pub mod env;
pub mod error;
pub mod exec;
pub mod flannel;
pub mod netconf;
pub mod netns;
pub mod plugin;
pub mod result;
pub mod state;
pub mod version;
