//! `vxmesh`: the CNI plugin binary. All logic lives in the library; this only connects the
//! process environment, stdin, stdout and the exit code.

use std::io::{IsTerminal, Write};

fn main() {
    let outcome = vxmesh_cni::plugin::run(
        |name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()),
        || {
            let stdin = std::io::stdin();
            // A person running `CNI_COMMAND=VERSION vxmesh` at a terminal gets an answer
            // instead of a hang.
            if stdin.is_terminal() {
                return Ok(Vec::new());
            }
            vxmesh_cni::plugin::read_netconf(stdin.lock())
        },
    );
    let mut out = std::io::stdout().lock();
    if !outcome.stdout.is_empty() {
        let _ = writeln!(out, "{}", outcome.stdout);
    }
    let _ = out.flush();
    std::process::exit(outcome.exit_code);
}
