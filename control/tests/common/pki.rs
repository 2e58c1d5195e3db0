//! A throwaway certificate authority for TLS tests, made by `scripts/lib/pki.sh` (the
//! recipe the secure netns lab uses): a CA, a server certificate for 127.0.0.1, a client
//! certificate, and a second, unrelated CA.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Pki {
    _dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA that signed none of the above.
    pub other_ca: PathBuf,
}

/// `pki_make DIR 127.0.0.1` from scripts/lib/pki.sh.
fn pki_make(dir: &Path) {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/lib/pki.sh");
    let out = Command::new("bash")
        .arg("-c")
        .arg(r#". "$1" && pki_make "$2" 127.0.0.1"#)
        .arg("pki")
        .arg(&lib)
        .arg(dir)
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "pki_make {} (needs openssl: apt-get install openssl): {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    pub fn generate() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        pki_make(&d.join("main"));
        pki_make(&d.join("other"));
        let m = d.join("main");
        Pki {
            ca: m.join("ca.pem"),
            server_cert: m.join("server.pem"),
            server_key: m.join("server-key.pem"),
            client_cert: m.join("client.pem"),
            client_key: m.join("client-key.pem"),
            other_ca: d.join("other/ca.pem"),
            _dir: dir,
        }
    }
}
