//! `vxmesh`: the CNI plugin binary. All logic lives in the library; this only connects the
//! process environment, stdin, stdout and the exit code.

use std::io::{IsTerminal, Read, Write};

fn main() {
    let outcome = vxmesh_cni::plugin::run(
        |name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()),
        || {
            let mut buf = Vec::new();
            let stdin = std::io::stdin();
            // A person running `CNI_COMMAND=VERSION vxmesh` at a terminal gets an answer
            // instead of a hang.
            if !stdin.is_terminal() {
                stdin.lock().read_to_end(&mut buf)?;
            }
            Ok(buf)
        },
    );
    let mut out = std::io::stdout().lock();
    if !outcome.stdout.is_empty() {
        let _ = writeln!(out, "{}", outcome.stdout);
    }
    let _ = out.flush();
    std::process::exit(outcome.exit_code);
}
