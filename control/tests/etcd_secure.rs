//! The registry and `vxmeshctl` against a real etcd that demands TLS with client
//! certificates, and against one with `auth enable` (user, password, expiring
//! tokens). Certificates are made per test with the openssl CLI.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::pki::Pki;
use common::{etcd_available, rt, Etcd};
use vxmesh_control::agent::acquire;
use vxmesh_control::etcd_access::{AccessFlags, EtcdAccess};
use vxmesh_control::lease::LeaseAttrs;
use vxmesh_control::lease_machine::LeaseMachine;
use vxmesh_control::registry::{Registry, RegistryError};

const PREFIX: &str = "/coreos.com/network";
const CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

fn access(etcd: &Etcd, f: AccessFlags) -> EtcdAccess {
    EtcdAccess::new(AccessFlags {
        endpoints: vec![etcd.endpoint.clone()],
        ..f
    })
    .unwrap()
}

fn tls_flags(ca: &Path, client: Option<&Pki>) -> AccessFlags {
    AccessFlags {
        cafile: Some(ca.to_path_buf()),
        certfile: client.map(|p| p.client_cert.clone()),
        keyfile: client.map(|p| p.client_key.clone()),
        ..AccessFlags::default()
    }
}

/// Connect and read the config: the error text, or "" when it worked.
async fn try_config(a: &EtcdAccess) -> String {
    let r = async {
        let reg = Registry::connect_with(a, PREFIX).await?;
        reg.network_config().await?;
        Ok::<_, RegistryError>(())
    };
    match r.await {
        Ok(()) => String::new(),
        Err(e) => e.to_string(),
    }
}

async fn lease_one(reg: &Registry, ip: Ipv4Addr) -> String {
    let cfg = reg.network_config().await.unwrap();
    let attrs = LeaseAttrs::vxlan(ip, 1, vxmesh_control::vtep_mac::derive(ip, 1));
    let held = acquire(
        reg,
        &mut LeaseMachine::new(cfg, ip, None, 1),
        &attrs,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    held.subnet.to_string()
}

fn bin(name: &str) -> PathBuf {
    common::lab::bin_dir().join(name)
}

#[test]
fn tls_with_client_certificates() {
    if !etcd_available("tls_with_client_certificates") {
        return;
    }
    let pki = Pki::generate();
    let etcd = Etcd::start_with(&[], Some(&pki));
    etcd.put(&format!("{PREFIX}/config"), CONFIG);
    rt().block_on(async {
        // The right CA and a client certificate: the registry works end to end.
        let good = access(&etcd, tls_flags(&pki.ca, Some(&pki)));
        let reg = Registry::connect_with(&good, PREFIX).await.unwrap();
        let subnet = lease_one(&reg, Ipv4Addr::new(192, 168, 56, 11)).await;
        let listing = reg.list_subnets().await.unwrap();
        assert_eq!(listing.entries.len(), 1);
        assert!(listing.entries[0].key.ends_with(&subnet.replace('/', "-")));

        // No client certificate: etcd refuses the handshake.
        let e = try_config(&access(&etcd, tls_flags(&pki.ca, None))).await;
        assert!(!e.is_empty(), "etcd demands a client certificate");
        assert!(
            e.contains("--etcd-certfile"),
            "the error names the flags: {e}"
        );

        // A CA that did not sign etcd's certificate: the server is not trusted.
        let e = try_config(&access(&etcd, tls_flags(&pki.other_ca, Some(&pki)))).await;
        assert!(
            e.contains("invalid peer certificate: UnknownIssuer"),
            "the cause is visible: {e}"
        );

        // Plain http:// to a TLS port fails (and does not hang).
        let plain = EtcdAccess::plain(&[etcd.endpoint.replace("https://", "http://")]);
        let e = try_config(&plain).await;
        assert!(!e.is_empty());
    });

    // vxmeshctl with the same flags, and with the same settings from the environment.
    let out = Command::new(bin("vxmeshctl"))
        .args(["--etcd-endpoints", &etcd.endpoint])
        .arg("--etcd-cafile")
        .arg(&pki.ca)
        .arg("--etcd-certfile")
        .arg(&pki.client_cert)
        .arg("--etcd-keyfile")
        .arg(&pki.client_key)
        .args(["--json", "leases"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("192.168.56.11"), "{stdout}");
    let out = Command::new(bin("vxmeshctl"))
        .env("VXMESHD_ETCD_ENDPOINTS", &etcd.endpoint)
        .env("VXMESHD_ETCD_CAFILE", &pki.ca)
        .env("VXMESHD_ETCD_CERTFILE", &pki.client_cert)
        .env("VXMESHD_ETCD_KEYFILE", &pki.client_key)
        .arg("config")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("10.244.0.0/16"));

    // Key and certificate swapped: refused before any connection, naming the file.
    let out = Command::new(bin("vxmeshctl"))
        .args(["--etcd-endpoints", &etcd.endpoint])
        .arg("--etcd-cafile")
        .arg(&pki.ca)
        .arg("--etcd-certfile")
        .arg(&pki.client_key)
        .arg("--etcd-keyfile")
        .arg(&pki.client_cert)
        .arg("leases")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--etcd-certfile") && stderr.contains("holds no PEM CERTIFICATE"),
        "{stderr}"
    );
}

#[test]
fn username_and_password_with_expiring_tokens() {
    if !etcd_available("username_and_password_with_expiring_tokens") {
        return;
    }
    // Tokens live 2 s, so the client must re-authenticate during the test.
    let mut etcd = Etcd::start_with(&["--auth-token", "simple", "--auth-token-ttl", "2"], None);
    etcd.put(&format!("{PREFIX}/config"), CONFIG);
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["role", "add", "vxmesh"],
        &[
            "role",
            "grant-permission",
            "vxmesh",
            "--prefix=true",
            "readwrite",
            "/coreos.com/network/",
        ],
        &["user", "add", "node:nodepw"],
        &["user", "add", "nobody:nobodypw"],
        &["user", "grant-role", "node", "vxmesh"],
        &["auth", "enable"],
    ] {
        etcd.ctl(args).unwrap();
    }
    etcd.ctl_extra.push("--user=root:rootpw".into());

    let creds = |user: &str, pw: &str| AccessFlags {
        username: Some(user.into()),
        password: Some(pw.into()),
        ..AccessFlags::default()
    };
    rt().block_on(async {
        let good = access(&etcd, creds("node", "nodepw"));
        let reg = Registry::connect_with(&good, PREFIX).await.unwrap();
        lease_one(&reg, Ipv4Addr::new(192, 168, 56, 12)).await;
        // Idle past the token's TTL: the next request re-authenticates on its own.
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(reg.list_subnets().await.unwrap().entries.len(), 1);
        reg.network_config().await.unwrap();

        let e = try_config(&access(&etcd, creds("node", "wrong"))).await;
        assert!(e.contains("authentication failed"), "{e}");
        assert!(e.contains("--etcd-username/--etcd-password"), "{e}");
        assert!(!e.contains("wrong"), "the password is not echoed: {e}");

        // No credentials at all: etcd refuses the request.
        let e = try_config(&EtcdAccess::plain(std::slice::from_ref(&etcd.endpoint))).await;
        assert!(
            e.contains("etcd has auth enabled: give --etcd-username and --etcd-password"),
            "anonymous reads are refused once auth is on, and the error says what to do: {e}"
        );

        // A user without a role on the prefix: told how to grant it.
        let e = try_config(&access(&etcd, creds("nobody", "nobodypw"))).await;
        assert!(e.contains("etcdctl role grant-permission"), "{e}");
    });
    // The key written through the user is flannel's, readable by etcdctl.
    let keys = etcd
        .ctl(&[
            "get",
            "--prefix",
            "--keys-only",
            "/coreos.com/network/subnets",
        ])
        .unwrap();
    assert!(
        keys.contains("/coreos.com/network/subnets/10.244."),
        "{keys}"
    );

    // vxmeshctl reads the password from the environment.
    let out = Command::new(bin("vxmeshctl"))
        .args([
            "--etcd-endpoints",
            &etcd.endpoint,
            "--etcd-username",
            "node",
        ])
        .env("VXMESHD_ETCD_PASSWORD", "nodepw")
        .arg("leases")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("192.168.56.12"));
    let out = Command::new(bin("vxmeshctl"))
        .args([
            "--etcd-endpoints",
            &etcd.endpoint,
            "--etcd-username",
            "node",
        ])
        .env_remove("VXMESHD_ETCD_PASSWORD")
        .arg("leases")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("without --etcd-password"));
}
