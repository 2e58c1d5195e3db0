//! Privileged end to end: `"EnableNFTables": true` in the network config moves a lab
//! node's masquerade and forward rules from iptables chains to vxmesh's nftables table
//! (`table ip vxmesh`) when its vxmeshd restarts, keeps them there (a deleted table is
//! back within the resync period), and removing the key moves them back. The agents run
//! with `--vxlan-notrack`, so the raw-table rules that leave the outer VXLAN untracked
//! move with them. Pods on both nodes reach each other throughout. Needs root, network namespaces, etcd and nft:
//! ignored by a plain `cargo test`, run by scripts/test.sh (`-- --include-ignored`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::lab::Lab;
use serde_json::Value;
use vxmesh_testkit::{require_commands, require_etcd, require_root, wait_for};

/// `<program> <args>` inside a lab node; stdout, or `None` when it fails.
fn try_in(lab: &Lab, node: &str, args: &[&str]) -> Option<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns(node)])
        .args(args)
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nft_table(lab: &Lab) -> Option<String> {
    try_in(lab, "n2", &["nft", "list", "table", "ip", "vxmesh"])
}

fn iptables_chains(lab: &Lab) -> bool {
    let saved = try_in(lab, "n2", &["iptables-save"]).unwrap();
    saved.contains(":VXMESH-POSTRTG")
        && saved.contains(":VXMESH-FWD")
        && saved.contains("-A PREROUTING -m comment --comment vxmesh -j VXMESH-NOTRACK")
        && saved.contains("-A OUTPUT -m comment --comment vxmesh -j VXMESH-NOTRACK")
        && saved.contains(
            "-p udp -m udp --dport 8472 -m comment --comment \"vxmesh notrack\" -j CT --notrack",
        )
}

fn put_config(lab: &Lab, nftables: bool) {
    lab.edit_network_config(|obj| {
        if nftables {
            obj.insert("EnableNFTables".into(), Value::Bool(true));
        } else {
            obj.remove("EnableNFTables");
        }
    });
}

#[test]
#[ignore = "needs root, network namespaces, etcd and nft: scripts/test.sh runs it"]
fn enable_nftables_moves_the_rules_and_keeps_them_in_place() {
    require_root();
    require_etcd();
    require_commands(&["nft", "iptables-save"]);
    let lab = Lab::new(
        "vxt",
        &[
            ("VXLAB_NODES", "2"),
            ("VXLAB_PODS", "1"),
            ("VXLAB_IPERF_SECONDS", "1"),
            ("VXLAB_AGENT_ARGS", "--iptables-resync=1 --vxlan-notrack"),
        ],
    );
    let (ok, out) = lab.cmd(&["up"]);
    println!("{out}");
    assert!(ok, "lab up failed");
    assert!(iptables_chains(&lab), "iptables mode to begin with");
    assert!(nft_table(&lab).is_none());

    put_config(&lab, true);
    lab.must(&["restart-agent", "2"]);
    let table = nft_table(&lab).expect("table ip vxmesh after the restart");
    let own = lab.subnet_of(2);
    assert!(
        table.contains(&format!("ip saddr != 10.244.0.0/16 ip daddr {own} return"))
            && table.contains("masquerade fully-random")
            && table.contains("ip daddr 10.244.0.0/16 accept")
            && table.contains("type filter hook prerouting priority raw")
            && table.contains("udp dport 8472 notrack"),
        "{table}"
    );
    assert!(!iptables_chains(&lab), "the iptables chains are removed");
    let saved = try_in(&lab, "n2", &["iptables-save"]).unwrap();
    assert!(!saved.contains("VXMESH"), "{saved}");
    lab.check(2, "n2 on nftables");

    lab.exec("n2", &["nft", "delete", "table", "ip", "vxmesh"]);
    let took = wait_for(Duration::from_secs(5), || nft_table(&lab).is_some())
        .expect("table ip vxmesh not restored within 5 s (resync 1 s)");
    println!("nftables table restored {took:?} after its deletion (--iptables-resync=1)");
    assert_eq!(nft_table(&lab).unwrap(), table, "restored as it was");
    lab.assert_repair_counted("n2");
    lab.check(2, "after the nftables repair");

    put_config(&lab, false);
    lab.must(&["restart-agent", "2"]);
    assert!(nft_table(&lab).is_none(), "the nftables table is removed");
    assert!(iptables_chains(&lab), "back on iptables");
    lab.check(2, "n2 back on iptables");
}
