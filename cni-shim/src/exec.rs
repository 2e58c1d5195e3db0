//! Running a delegate plugin: find it on CNI_PATH, exec it with our environment plus
//! overrides, feed the config on stdin, pass its stderr through, collect its stdout.
//!
//! Read first: CNI SPEC.md section 4 "Delegated plugin execution procedure". A delegate that
//! fails prints a CNI error on stdout; it is returned as our error with the delegate's code.

use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;

use serde_json::Value;

use crate::error::{code, CniError};

/// Whether `name` can name a plugin: a plain file name, so that only CNI_PATH's
/// directories are searched (not `/usr/bin/true`, `../x`, `.` or `..`).
pub fn plugin_name_ok(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

/// The first executable regular file named `name` in the CNI_PATH directories; `None`
/// for a name that is not a plain file name ([`plugin_name_ok`]).
pub fn find_plugin(name: &str, cni_path: &[String]) -> Option<PathBuf> {
    if !plugin_name_ok(name) {
        return None;
    }
    cni_path
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Like [`find_plugin`], as a CNI error: code 7 for a name that is not a plain file
/// name, code 4 (naming CNI_PATH) when absent.
pub fn require_plugin(name: &str, cni_path: &[String]) -> Result<PathBuf, CniError> {
    if !plugin_name_ok(name) {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("plugin type {name:?} is not a plugin name"),
            "a plugin type is the file name of a plugin in CNI_PATH's directories, \
             such as \"bridge\"; it holds no '/'",
        ));
    }
    find_plugin(name, cni_path).ok_or_else(|| {
        CniError::new(
            code::INVALID_ENV,
            format!("delegate plugin {name:?} not found in CNI_PATH"),
            format!(
                "CNI_PATH={}: install the reference plugins (Debian: containernetworking-plugins, \
                 in /usr/lib/cni) and make sure the runtime's plugin directories include them",
                cni_path.join(":")
            ),
        )
    })
}

/// Spawns `cmd`, retrying a few times over ~0.1 s while the executable is busy
/// (`ETXTBSY`): a file just written is briefly held open for writing by any child another
/// thread forked meanwhile (until that child execs), and a plugin being replaced by a
/// package upgrade is busy the same way.
fn spawn_retrying_busy(cmd: &mut Command) -> io::Result<std::process::Child> {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 5 => {
                tries += 1;
                thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// One environment change for the child: set (`Some`) or remove (`None`).
pub type EnvChange<'a> = (&'a str, Option<&'a str>);

/// Executes `plugin` with our environment plus `env`, `stdin` on its stdin, its stderr
/// inherited. Returns stdout on exit status 0.
pub fn run(plugin: &Path, env: &[EnvChange<'_>], stdin: &[u8]) -> Result<Vec<u8>, CniError> {
    let name = plugin
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut cmd = Command::new(plugin);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let io_err = |what: &str, e: io::Error| {
        CniError::new(
            code::IO,
            format!("failed to {what} delegate plugin {name}"),
            format!("{}: {e}", plugin.display()),
        )
    };
    let mut child = spawn_retrying_busy(&mut cmd).map_err(|e| io_err("execute", e))?;
    let mut child_stdin = child.stdin.take();
    let input = stdin.to_vec();
    // Feed stdin from a thread so a delegate that writes before reading cannot deadlock us.
    let feeder = thread::spawn(move || -> io::Result<()> {
        if let Some(mut s) = child_stdin.take() {
            s.write_all(&input)?;
        }
        Ok(())
    });
    let output = child
        .wait_with_output()
        .map_err(|e| io_err("wait for", e))?;
    match feeder.join() {
        Ok(Ok(())) => {}
        // A delegate that exits without reading all of stdin closes the pipe; its exit status
        // and output below are what matter.
        Ok(Err(e)) if e.kind() == io::ErrorKind::BrokenPipe => {}
        Ok(Err(e)) => return Err(io_err("write config to", e)),
        Err(_) => {
            return Err(CniError::new(
                code::IO,
                format!("failed to write config to delegate plugin {name}"),
                "stdin writer thread panicked",
            ))
        }
    }
    if output.status.success() {
        return Ok(output.stdout);
    }
    Err(delegate_error(&name, &output.stdout, output.status))
}

fn delegate_error(name: &str, stdout: &[u8], status: std::process::ExitStatus) -> CniError {
    if let Ok(v) = serde_json::from_slice::<Value>(stdout) {
        if let Some(c) = v
            .get("code")
            .and_then(Value::as_u64)
            .and_then(|c| u32::try_from(c).ok())
        {
            let msg = v.get("msg").and_then(Value::as_str).unwrap_or("failed");
            let details = v.get("details").and_then(Value::as_str).unwrap_or("");
            return CniError::new(c, format!("delegate {name}: {msg}"), details);
        }
    }
    let text = String::from_utf8_lossy(stdout);
    let snippet: String = text.chars().take(400).collect();
    CniError::new(
        code::DELEGATE_FAILED,
        format!("delegate {name} failed ({status}) without a CNI error"),
        format!("stdout: {snippet:?}; see the delegate's messages above on stderr"),
    )
}

/// Asks a plugin which spec versions it supports (`CNI_COMMAND=VERSION`).
pub fn supported_versions(plugin: &Path, requested: &str) -> Result<Vec<String>, CniError> {
    let stdin = serde_json::json!({ "cniVersion": requested }).to_string();
    let out = run(
        plugin,
        &[("CNI_COMMAND", Some("VERSION"))],
        stdin.as_bytes(),
    )?;
    let v: Value = serde_json::from_slice(&out).map_err(|e| {
        CniError::new(
            code::DECODE,
            format!("cannot decode VERSION answer of {}", plugin.display()),
            e.to_string(),
        )
    })?;
    let list = v
        .get("supportedVersions")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    Ok(list)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::fs;

    use super::*;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn finds_first_executable_on_path() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        fs::write(a.path().join("bridge"), b"not executable").unwrap();
        let want = script(b.path(), "bridge", "exit 0");
        let path = vec![
            "/nonexistent".to_string(),
            a.path().display().to_string(),
            b.path().display().to_string(),
        ];
        assert_eq!(find_plugin("bridge", &path), Some(want));
        assert_eq!(
            require_plugin("nope", &path).unwrap_err().code,
            code::INVALID_ENV
        );
    }

    #[test]
    fn passes_env_and_stdin_and_returns_stdout() {
        let d = tempfile::tempdir().unwrap();
        let p = script(
            d.path(),
            "echo",
            "printf '%s|' \"$CNI_COMMAND\" \"${GONE-unset}\"; cat",
        );
        let out = run(
            &p,
            &[("CNI_COMMAND", Some("ADD")), ("GONE", None)],
            b"{\"x\":1}",
        )
        .unwrap();
        assert_eq!(out, b"ADD|unset|{\"x\":1}");
    }

    #[test]
    fn delegate_error_keeps_its_code() {
        let d = tempfile::tempdir().unwrap();
        let p = script(
            d.path(),
            "bridge",
            "echo '{\"code\":7,\"msg\":\"bad mtu\",\"details\":\"x\"}'; exit 1",
        );
        let e = run(&p, &[], b"").unwrap_err();
        assert_eq!(e.code, 7);
        assert_eq!(e.msg, "delegate bridge: bad mtu");
        let p = script(d.path(), "crash", "echo boom; exit 2");
        let e = run(&p, &[], b"").unwrap_err();
        assert_eq!(e.code, code::DELEGATE_FAILED);
    }

    #[test]
    fn early_exit_without_reading_stdin_is_not_an_io_error() {
        let d = tempfile::tempdir().unwrap();
        let p = script(d.path(), "quick", "echo '{}'");
        let big = vec![b' '; 1 << 20];
        assert_eq!(run(&p, &[], &big).unwrap(), b"{}\n");
    }

    #[test]
    fn parses_version_answer() {
        let d = tempfile::tempdir().unwrap();
        let p = script(
            d.path(),
            "v",
            "echo '{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[\"0.4.0\",\"1.0.0\"]}'",
        );
        assert_eq!(
            supported_versions(&p, "1.1.0").unwrap(),
            vec!["0.4.0", "1.0.0"]
        );
    }
}
