//! vxmeshctl as a shell user meets it, without an agent or root: an HTTP stand-in for
//! the agent on loopback, and the process's exit and stderr.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

const CTL: &str = env!("CARGO_BIN_EXE_vxmeshctl");

/// Serves one request on loopback with `body` as JSON; the agent URL.
fn one_response(body: String) -> (String, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        // The whole request first: a socket closed with unread bytes resets the
        // connection, and the client would read an error instead of the answer.
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
        }
        let _ = write!(
            s,
            "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    });
    (url, t)
}

/// `vxmeshctl peers --json | head -c 100`: the reader goes away while vxmeshctl still
/// has far more than a pipe holds to print. It ends as `ip` or `ls` would (SIGPIPE),
/// not with a panic.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    // About 1.5 MB of JSON: 10,000 peers.
    let peers: Vec<String> = (0..10_000)
        .map(|i| {
            format!(
                r#"{{"subnet":"10.{}.{}.0/24","public_ip":"192.168.0.1","vtep_mac":"02:00:00:00:00:01","tx_packets":1,"tx_bytes":1,"rx_packets":1,"rx_bytes":1,"drops":{{}},"last_tx_unix_ms":0,"last_rx_unix_ms":0,"underlay_tap_path":false}}"#,
                i / 256,
                i % 256
            )
        })
        .collect();
    let (url, server) = one_response(format!("[{}]", peers.join(",")));
    let mut child = Command::new(CTL)
        .args(["--agent", &url, "peers", "--json"])
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 100];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    server.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?} {stderr}",
        out.status
    );
}

/// An operator's mistake (no agent there) is one clear message and exit 1, with no
/// stack backtrace even when RUST_BACKTRACE is set.
#[test]
fn an_error_is_a_message_not_a_backtrace() {
    // A port nothing listens on: bound, then closed.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(CTL)
        .args(["--agent", &format!("http://127.0.0.1:{port}"), "status"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("Error: cannot reach the agent at http://127.0.0.1:"),
        "{stderr}"
    );
    assert!(stderr.contains("Caused by:"), "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
    assert!(stderr.lines().count() < 6, "{stderr}");
}
