//! vxmesh-bench: the benchmark harness of issue 4. Network namespaces, commands and
//! unique names come from `vxmesh-testkit`, which the privileged tests use too.
//!
//! - [`topo`]: the 2-node benchmark topology per mode (no overlay, kernel VXLAN
//!   with flannel's recipe, vxmesh with etcd and vxmeshd), torn down on drop.
//! - [`measure`]: iperf3 TCP/UDP, ping and CPU accounting on a topology.
//! - [`report`]: the results model, summary, target checks, markdown.
//! - [`parse`], [`cpu`], [`stats`]: pure helpers (tool output, procfs, medians).
//! - [`probe`]: what a system call and a thread wake-up cost on this machine.
//! - [`proc`], [`stop`]: bounded child processes and Ctrl-C handling.
//! - [`scale`]: the scale harness of issue 16 (N namespaces with agents against a
//!   3-member etcd), with [`routemon`] watching every namespace's routes; [`sim`]: the
//!   in-process simulation of thousands of nodes over the control plane's pure cores
//!   and an in-memory registry ([`memreg`]).
//!
//! The binary (`src/main.rs`) wires them together; see docs/benchmarks.md.
pub mod cpu;
pub mod measure;
pub mod memreg;
pub mod parse;
pub mod probe;
pub mod proc;
pub mod report;
pub mod routemon;
pub mod scale;
pub mod sim;
pub mod stats;
pub mod stop;
pub mod topo;
