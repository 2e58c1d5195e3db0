//! Shared by the benchmark harness and the privileged tests: network namespaces
//! as RAII guards, commands run inside them, and closures run on a thread that
//! has entered one.
pub mod netns;
