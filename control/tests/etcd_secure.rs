//! The registry and `vxmeshctl` against a real etcd that demands TLS with client
//! certificates, and against one with `auth enable` (user, password, expiring
//! tokens). Certificates are made per test with the openssl CLI. Needs etcd: ignored by a
//! plain `cargo test`, run by scripts/test.sh (`-- --include-ignored`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::pki::Pki;
use common::{rt, Etcd};
use vxmesh_control::agent::acquire;
use vxmesh_control::etcd_access::{AccessFlags, EtcdAccess};
use vxmesh_control::lease::LeaseAttrs;
use vxmesh_control::lease_machine::LeaseMachine;
use vxmesh_control::registry::{Registry, RegistryError};
use vxmesh_testkit::require_etcd;

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
    held.subnet().unwrap().to_string()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs the built vxmeshctl with `args` and exactly the `env` given among the
/// VXMESHD_ETCD_* variables: success, stdout, stderr.
fn vxmeshctl(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut c = Command::new(common::lab::bin_dir().join("vxmeshctl"));
    for v in [
        "ENDPOINTS",
        "PREFIX",
        "CAFILE",
        "CERTFILE",
        "KEYFILE",
        "USERNAME",
        "PASSWORD",
    ] {
        c.env_remove(format!("VXMESHD_ETCD_{v}"));
    }
    let out = c.args(args).envs(env.iter().copied()).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
#[ignore = "needs etcd: scripts/test.sh runs it"]
fn tls_with_client_certificates() {
    require_etcd();
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
    let (ca, cert, key) = (s(&pki.ca), s(&pki.client_cert), s(&pki.client_key));
    let tls_args = [
        "--etcd-endpoints",
        &etcd.endpoint,
        "--etcd-cafile",
        ca,
        "--etcd-certfile",
        cert,
        "--etcd-keyfile",
        key,
    ];
    let (ok, out, err) = vxmeshctl(&[&tls_args[..], &["--json", "leases"]].concat(), &[]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("192.168.56.11"), "{out}");
    let env = [
        ("VXMESHD_ETCD_ENDPOINTS", etcd.endpoint.as_str()),
        ("VXMESHD_ETCD_CAFILE", ca),
        ("VXMESHD_ETCD_CERTFILE", cert),
        ("VXMESHD_ETCD_KEYFILE", key),
    ];
    let (ok, out, err) = vxmeshctl(&["config"], &env);
    assert!(ok, "{err}");
    assert!(out.contains("10.244.0.0/16"), "{out}");

    // Key and certificate swapped: refused before any connection, naming the file.
    let mut swapped = tls_args;
    swapped.swap(5, 7);
    let (ok, _, err) = vxmeshctl(&[&swapped[..], &["leases"]].concat(), &[]);
    assert!(!ok);
    assert!(
        err.contains("--etcd-certfile") && err.contains("holds no PEM CERTIFICATE"),
        "{err}"
    );
}

#[test]
#[ignore = "needs etcd: scripts/test.sh runs it"]
fn username_and_password_with_expiring_tokens() {
    require_etcd();
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
    let args = [
        "--etcd-endpoints",
        &etcd.endpoint,
        "--etcd-username",
        "node",
        "leases",
    ];
    let (ok, out, err) = vxmeshctl(&args, &[("VXMESHD_ETCD_PASSWORD", "nodepw")]);
    assert!(ok, "{err}");
    assert!(out.contains("192.168.56.12"), "{out}");
    let (ok, _, err) = vxmeshctl(&args, &[]);
    assert!(!ok);
    assert!(err.contains("without --etcd-password"), "{err}");
}
