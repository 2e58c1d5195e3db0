//! vxmesh-bench: the benchmark harness (see docs/benchmarks.md).
fn main() {
    eprintln!("vxmesh-bench: not built yet; see docs/benchmarks.md");
    std::process::exit(2);
}
