//! iptables mode on a host whose `nft` is installed but does not work (a kernel without
//! nf_tables, say): applying the iptables rules also tries to remove an nftables table of
//! an earlier run, and that failing must not fail the iptables rules. A fake `nft` that
//! always fails goes first on PATH — its own test binary, since PATH is process-wide.
//! Needs root and iptables: ignored by a plain `cargo test`, run by scripts/test.sh
//! (`-- --include-ignored`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;

use vxmesh_control::masq::{self, Backend, Ensured, Rules};
use vxmesh_control::subnet::Subnet;
use vxmesh_testkit::{require_commands, require_root, unique_prefix, Netns};

#[test]
#[ignore = "needs root, network namespaces and iptables: scripts/test.sh runs it"]
fn iptables_mode_works_when_nft_fails() {
    require_root();
    require_commands(&["iptables", "iptables-save", "iptables-restore"]);
    let dir = std::env::temp_dir().join(format!("{}-fake-nft", unique_prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let fake = dir.join("nft");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'Error: nf_tables unavailable (fake)' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = std::env::var("PATH").unwrap_or_default();
    // The only test in this binary: no other thread reads the environment.
    std::env::set_var("PATH", format!("{}:{path}", dir.display()));

    let ns = Netns::unique("masq-nonft").unwrap();
    let rules = Rules {
        masquerade: true,
        random_fully: true,
        forward: true,
        untrack: None,
        underlay_tap: None,
        backend: Backend::Iptables,
    };
    let (n, own): (Subnet, Subnet) = (
        "10.244.0.0/16".parse().unwrap(),
        "10.244.3.0/24".parse().unwrap(),
    );
    let r = ns
        .run(move || masq::ensure(&n, &own, rules, &mut None))
        .unwrap();
    let saved = ns.exec("iptables-save", &[]).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        r.unwrap(),
        Ensured::Applied,
        "iptables mode failed because nft does"
    );
    assert!(
        saved.contains(":VXMESH-POSTRTG") && saved.contains(":VXMESH-FWD"),
        "{saved}"
    );
}
