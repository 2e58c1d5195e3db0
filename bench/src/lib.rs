//! vxmesh-bench: the benchmark harness of issue 4. Network namespaces, commands and
//! unique names come from `vxmesh-testkit`, which the privileged tests use too.
//!
//! - [`topo`]: the 2-node benchmark topology per mode (no overlay, kernel VXLAN
//!   with flannel's recipe, vxmesh with etcd and vxmeshd), torn down on drop.
//! - [`measure`]: iperf3 TCP/UDP, ping and CPU accounting on a topology.
//! - [`report`]: the results model, summary, target checks, markdown.
//! - [`parse`], [`cpu`], [`stats`]: pure helpers (tool output, procfs, medians).
//! - [`proc`], [`stop`]: bounded child processes and Ctrl-C handling.
//!
//! The binary (`src/main.rs`) wires them together; see docs/benchmarks.md.
pub mod cpu;
pub mod measure;
pub mod parse;
pub mod proc;
pub mod report;
pub mod stats;
pub mod stop;
pub mod topo;
