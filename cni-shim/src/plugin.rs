//! The six CNI operations, wiring the pure parts to the shell (files, exec, netns).
//!
//! Read first: CNI SPEC.md section 2 (operations) and section 4 (delegation), and
//! docs/cni.md for the behaviour operators see. Each handler returns what goes on stdout
//! (`Ok(Some(json))` for ADD and VERSION, `Ok(None)` otherwise) or a [`CniError`].

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Map, Value};
use vxmesh_subnet_env::{SubnetEnv, SubnetEnvError};

use crate::delegate;
use crate::env::{self, Attachment, CmdArgs, Command, ContainerId, IfName};
use crate::error::{code, CniError};
use crate::exec::{self, EnvChange};
use crate::flannel;
use crate::netconf::{self, NetConf};
use crate::netns;
use crate::result::CniResult;
use crate::state::{self, LockError, StateDir};
use crate::version::{self, SpecVersion};

/// What one invocation produced: stdout text and the process exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Text for stdout (a result, a VERSION answer, an error, or nothing).
    pub stdout: String,
    /// Process exit code: 0 on success, 1 on error (the CNI code is in the JSON).
    pub exit_code: i32,
}

/// Writes one log line on stderr.
pub fn log(msg: impl AsRef<str>) {
    eprintln!("vxmesh[{}]: {}", std::process::id(), msg.as_ref());
}

/// Reads the network config from `r` (stdin), at most [`crate::state::MAX_FILE_BYTES`]
/// like every file the plugin reads: a runtime that streams without end gets an error
/// (code 5), not a plugin that grows until the node runs out of memory.
pub fn read_netconf(r: impl io::Read) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let max = crate::state::MAX_FILE_BYTES;
    let mut buf = Vec::new();
    r.take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("more than {max} bytes on stdin; a network config is a few KiB"),
        ));
    }
    Ok(buf)
}

/// Runs one invocation. `get_env` reads the environment; `read_stdin` is called at most once
/// and only when stdin is needed.
pub fn run(
    get_env: impl Fn(&str) -> Option<String>,
    read_stdin: impl FnOnce() -> io::Result<Vec<u8>>,
) -> Outcome {
    let args = match env::parse(&get_env) {
        Ok(a) => a,
        Err(e) => {
            if get_env("CNI_COMMAND").is_none_or(|c| c.is_empty()) {
                log(format!(
                    "CNI plugin vxmesh {} (flannel-compatible, delegates to bridge + host-local); \
                     CNI protocol versions supported: {}",
                    env!("CARGO_PKG_VERSION"),
                    supported_list().join(", ")
                ));
            }
            return fail(SpecVersion::LATEST.as_str(), e);
        }
    };
    let stdin = match read_stdin() {
        Ok(b) => b,
        Err(e) => {
            return fail(
                SpecVersion::LATEST.as_str(),
                CniError::new(
                    code::IO,
                    "error reading network config from stdin",
                    e.to_string(),
                ),
            )
        }
    };
    if args.command == Command::Version {
        let requested = netconf::peek_version(&stdin)
            .unwrap_or_else(|| SpecVersion::LATEST.as_str().to_string());
        let answer = json!({ "cniVersion": requested, "supportedVersions": supported_list() });
        return Outcome {
            stdout: answer.to_string(),
            exit_code: 0,
        };
    }
    let echo_version = netconf::peek_version(&stdin)
        .filter(|v| SpecVersion::parse(v).is_some())
        .unwrap_or_else(|| SpecVersion::LATEST.as_str().to_string());
    let parsed = if args.command == Command::Del {
        netconf::parse_for_del(&stdin)
    } else {
        netconf::parse(&stdin)
    };
    let nc = match parsed {
        Ok(nc) => nc,
        Err(e) => return fail(&echo_version, e),
    };
    for w in &nc.warnings {
        log(w);
    }
    if let Some(e) = &nc.invalid {
        log(format!(
            "the netconf would not do for ADD ({}: {}); DEL goes on with the config saved at ADD",
            e.msg, e.details
        ));
    }
    let version = nc.cni_version;
    let result = match args.command {
        Command::Add => cmd_add(&args, &nc),
        Command::Del => cmd_del(&args, &nc).map(|()| None),
        Command::Check => cmd_check(&args, &nc).map(|()| None),
        Command::Gc => cmd_gc(&args, &nc).map(|()| None),
        Command::Status => cmd_status(&args, &nc).map(|()| None),
        Command::Version => Ok(None),
    };
    match result {
        Ok(stdout) => Outcome {
            stdout: stdout.unwrap_or_default(),
            exit_code: 0,
        },
        Err(e) => fail(version.as_str(), e),
    }
}

fn supported_list() -> Vec<&'static str> {
    SpecVersion::ALL.iter().map(|v| v.as_str()).collect()
}

fn fail(version: &str, e: CniError) -> Outcome {
    log(format!("error: {e}"));
    Outcome {
        stdout: e.to_json(version),
        exit_code: 1,
    }
}

/// The attachment of an ADD/DEL/CHECK; env parsing guarantees it is there.
fn attachment_of(args: &CmdArgs) -> Result<&Attachment, CniError> {
    args.attachment.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_ENV,
            "required env variables [CNI_CONTAINERID,CNI_IFNAME] missing",
            "",
        )
    })
}

fn netns_of(args: &CmdArgs) -> Result<&str, CniError> {
    args.netns.as_deref().ok_or_else(|| {
        CniError::new(
            code::INVALID_ENV,
            "required env variables [CNI_NETNS] missing",
            "",
        )
    })
}

/// Reads and parses the subnet file; every failure says what the operator should look at.
pub fn load_subnet_env(path: &str) -> Result<SubnetEnv, CniError> {
    let bytes = match state::read_capped(Path::new(path)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(CniError::new(
                code::TRY_AGAIN_LATER,
                format!("subnet file {path} not found: is vxmeshd running on this node?"),
                "vxmeshd (or flanneld) writes it once it holds a subnet lease from etcd; \
                 check `systemctl status vxmeshd` and its log, and that the netconf's \
                 subnetFile matches the agent's --subnet-file",
            ))
        }
        Err(e) => {
            return Err(CniError::new(
                code::IO,
                format!("cannot read subnet file {path}"),
                e.to_string(),
            ))
        }
    };
    SubnetEnv::parse(&bytes).map_err(|e| {
        let msg = match &e {
            SubnetEnvError::Missing(_) => format!("subnet file {path} is incomplete"),
            SubnetEnvError::Invalid { .. } | SubnetEnvError::Inconsistent { .. } => {
                format!("subnet file {path} is not usable")
            }
        };
        CniError::new(
            code::TRY_AGAIN_LATER,
            msg,
            format!(
                "{e}; vxmeshd rewrites this file when it (re)acquires its lease — check its log, \
                 or restart it"
            ),
        )
    })
}

fn state_error(dir: &str, e: io::Error) -> CniError {
    CniError::new(
        code::IO,
        format!("cannot use state directory {dir}"),
        format!("{e}; check the netconf's dataDir and that the plugin runs as root"),
    )
}

/// Opens and locks the netconf's data directory.
fn lock_state(nc: &NetConf) -> Result<StateDir, CniError> {
    StateDir::open_locked(Path::new(&nc.data_dir)).map_err(|e| match e {
        LockError::Io(e) => state_error(&nc.data_dir, e),
        LockError::Busy { waited, holder } => busy_error(&nc.data_dir, waited, holder),
    })
}

/// Code 11 for a data directory whose lock another run held for the whole wait.
fn busy_error(dir: &str, waited: Duration, holder: Option<u32>) -> CniError {
    let who = match holder {
        Some(pid) => format!(
            "process {pid} has held it for over {} s: if it is hung (see /proc/{pid}/cmdline and its children), kill it",
            waited.as_secs()
        ),
        None => format!(
            "another process has held it for over {} s: if a vxmesh run is hung (`fuser -v {dir}`), kill it",
            waited.as_secs()
        ),
    };
    CniError::new(
        code::TRY_AGAIN_LATER,
        format!("state directory {dir} is locked by another plugin run"),
        format!("{who}; the runtime retries this call"),
    )
}

/// The bytes a delegate gets on stdin.
fn config_bytes(config: Map<String, Value>) -> Result<Vec<u8>, CniError> {
    serde_json::to_vec(&Value::Object(config))
        .map_err(|e| CniError::new(code::IO, "cannot serialize delegate config", e.to_string()))
}

/// The delegate plugin named in a saved config.
fn saved_type(saved: &Map<String, Value>) -> Result<&str, CniError> {
    saved
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| CniError::new(code::DECODE, "saved delegate config has no type", ""))
}

/// The delegate version to use for `requested`, after asking the delegate.
fn negotiate(plugin: &Path, requested: SpecVersion) -> Result<SpecVersion, CniError> {
    let supported = exec::supported_versions(plugin, requested.as_str())?;
    version::negotiate(requested, &supported).ok_or_else(|| {
        CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "delegate {} supports no CNI version at or below {requested}",
                plugin.display()
            ),
            format!("it supports [{}]", supported.join(" ")),
        )
    })
}

/// Converts a `prevResult` to `version`'s layout; `None` when it cannot be understood.
fn prev_result_for(nc: &NetConf, version: SpecVersion) -> Option<Value> {
    prev_result_with(nc, version, |_| {})
}

/// Like [`prev_result_for`], letting `adjust` change the result first.
fn prev_result_with(
    nc: &NetConf,
    version: SpecVersion,
    adjust: impl FnOnce(&mut CniResult),
) -> Option<Value> {
    let prev = nc.prev_result.clone()?;
    let converted = CniResult::from_value(prev).and_then(|mut r| {
        adjust(&mut r);
        r.to_layout(version)
    });
    match converted {
        Ok(r) => Some(r.to_value()),
        Err(e) => {
            log(format!("ignoring prevResult that cannot be read: {e}"));
            None
        }
    }
}

fn cmd_add(args: &CmdArgs, nc: &NetConf) -> Result<Option<String>, CniError> {
    let att = attachment_of(args)?;
    let netns = netns_of(args)?;
    if !state::name_fits(att) {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "CNI_CONTAINERID: {} characters is too long",
                att.container_id.as_str().len()
            ),
            "with CNI_IFNAME it names this attachment's state file, which must fit 255 bytes; \
             runtimes use IDs of 64 characters",
        ));
    }
    // A plugin earlier in the chain produced this; vxmesh appends its result to it.
    let prev = nc
        .prev_result
        .clone()
        .map(CniResult::from_value)
        .transpose()
        .map_err(|e| {
            CniError::new(
                code::INVALID_CONFIG,
                "invalid network config: field prevResult",
                format!("prevResult: {e}"),
            )
        })?;
    let subnet_env = load_subnet_env(&nc.subnet_file)?;

    match netns::link_exists(netns, att.ifname.as_str()) {
        Ok(false) => {}
        Ok(true) => {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!(
                    "CNI_IFNAME: interface {} already exists in CNI_NETNS {netns}",
                    att.ifname
                ),
                "ADD must create a new interface; choose another CNI_IFNAME or DEL the \
                 existing attachment first",
            ))
        }
        Err(e) => {
            return Err(CniError::new(
                code::INVALID_NETNS,
                format!("CNI_NETNS {netns} is not a usable network namespace"),
                e.to_string(),
            ))
        }
    }

    let plugin = exec::require_plugin(nc.delegate_type(), &args.cni_path)?;
    let dver = negotiate(&plugin, nc.cni_version)?;
    let config = delegate::render(nc, &subnet_env, dver);
    let subnet = delegate::saved_subnet(&config).unwrap_or_default();
    let bytes = config_bytes(config)?;

    let state = lock_state(nc)?;
    // The file name holds no network name (flannel's layout, which GC's pairs follow): an
    // attachment of another network sharing this dataDir keeps its file until its own DEL.
    let held = state.load(att).map_err(|e| state_error(&nc.data_dir, e))?;
    if let Some(SavedState::OtherNetwork(other)) = held.map(|b| classify_own(&b, &nc.name)) {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "container {} interface {} is attached to network {}",
                att.container_id,
                att.ifname,
                other.as_deref().unwrap_or("(unnamed)")
            ),
            format!(
                "{} holds that network's attachment; DEL it from that network first, or choose \
                 another CNI_IFNAME",
                state.path_of(att).display()
            ),
        ));
    }
    state
        .save(att, &bytes)
        .map_err(|e| state_error(&nc.data_dir, e))?;
    log(format!(
        "ADD {}/{} netns={netns}: delegate {} (cniVersion {dver}), subnet {}",
        att.container_id,
        att.ifname,
        plugin.display(),
        subnet
    ));

    let outcome = exec::run(&plugin, &[("CNI_COMMAND", Some("ADD"))], &bytes).and_then(|out| {
        let mut result = CniResult::from_slice(&out).map_err(|e| {
            CniError::new(
                code::DECODE,
                format!(
                    "cannot decode the result of delegate {}",
                    nc.delegate_type()
                ),
                e,
            )
        })?;
        // Only the pod's own namespace is entered, whatever path the delegate printed.
        let missing = result.fill_sandbox_macs(|sandbox, name| {
            if sandbox != netns {
                log(format!(
                    "not reading the MAC of {name}: its sandbox {sandbox} is not CNI_NETNS"
                ));
                return None;
            }
            netns::link_mac(sandbox, name)
                .map_err(|e| log(format!("cannot read MAC of {name} in {sandbox}: {e}")))
                .ok()
        });
        if !missing.is_empty() {
            log(format!(
                "result has no MAC for {}; podman will reject it",
                missing.join(",")
            ));
        }
        if let Some(prev) = prev {
            result = result.appended_to(prev);
        }
        let out = result
            .to_layout(nc.cni_version)
            .map_err(|e| CniError::new(code::DECODE, "cannot convert the delegate's result", e))?;
        serde_json::to_string(&out)
            .map_err(|e| CniError::new(code::IO, "cannot serialize result", e.to_string()))
    });

    match outcome {
        Ok(json) => Ok(Some(json)),
        Err(e) => {
            log(format!(
                "ADD {}/{} failed, rolling back through delegate DEL: {e}",
                att.container_id, att.ifname
            ));
            match exec::run(&plugin, &[("CNI_COMMAND", Some("DEL"))], &bytes) {
                Ok(_) => {
                    if let Err(re) = state.remove(att) {
                        log(format!("rollback: cannot remove state file: {re}"));
                    }
                }
                Err(de) => log(format!(
                    "rollback DEL failed ({de}); keeping {} for the runtime's DEL",
                    state.path_of(att).display()
                )),
            }
            Err(e)
        }
    }
}

/// Runs the delegate's DEL for a saved config. `netns` is passed only if it still exists.
fn delegate_del(
    saved: &Map<String, Value>,
    requested: SpecVersion,
    cni_path: &[String],
    env: &[EnvChange<'_>],
    prev_result: Option<&NetConf>,
) -> Result<(), CniError> {
    let dtype = saved_type(saved)?;
    let plugin = exec::require_plugin(dtype, cni_path)?;
    let saved_version = saved
        .get("cniVersion")
        .and_then(Value::as_str)
        .and_then(SpecVersion::parse);
    let dver = match negotiate(&plugin, requested) {
        Ok(v) => v,
        Err(e) => match saved_version {
            Some(v) => {
                log(format!("{e}; using the ADD-time version {v}"));
                v
            }
            None => return Err(e),
        },
    };
    let prev = prev_result
        .filter(|_| dver >= SpecVersion::V0_4_0)
        .and_then(|nc| prev_result_for(nc, dver));
    let config = delegate::for_invocation(saved, dver, prev);
    let bytes = config_bytes(config)?;
    exec::run(&plugin, env, &bytes).map(|_| ())
}

/// What one of vxmesh's own state files holds, for the network `network`.
type SavedState = flannel::Saved;

/// Classifies the bytes of vxmesh's state file (the delegate config ADD saved: flannel's
/// content, [`flannel::classify`]) for the network `network`. A file naming another network
/// is that network's even when the rest is damaged; a saved `type` of `vxmesh` would run
/// this plugin again under the same lock, so it is unreadable.
fn classify_own(bytes: &[u8], network: &str) -> SavedState {
    match saved_name(bytes) {
        Some(n) if n != network => return SavedState::OtherNetwork(Some(n)),
        _ => {}
    }
    match flannel::classify(bytes, network) {
        SavedState::Ours(m) if m.get("type").and_then(Value::as_str) == Some("vxmesh") => {
            SavedState::Unreadable("its delegate type is vxmesh itself".into())
        }
        other => other,
    }
}

/// The network a saved config names, if it is a JSON object with a string `name`.
fn saved_name(bytes: &[u8]) -> Option<String> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(mut m)) => match m.remove("name") {
            Some(Value::String(n)) => Some(n),
            _ => None,
        },
        _ => None,
    }
}

/// The delegate's DEL with a config rendered from the current netconf and subnet file, as
/// ADD renders it: for an attachment whose saved config is damaged. host-local releases by
/// container ID and interface, and bridge deletes the interface by name, so this undoes
/// what ADD did as long as the delegate types have not changed.
fn del_rendered(
    args: &CmdArgs,
    nc: &NetConf,
    att: &Attachment,
    why: &str,
    env: &[EnvChange<'_>],
) -> Result<(), CniError> {
    let context = |e: CniError| {
        CniError::new(
            e.code,
            format!(
                "state of container {} interface {} is damaged ({why}), and releasing it with the current netconf failed: {}",
                att.container_id, att.ifname, e.msg
            ),
            e.details,
        )
    };
    // Rendering needs a netconf ADD would take.
    if let Some(e) = &nc.invalid {
        return Err(context(e.clone()));
    }
    let subnet_env = load_subnet_env(&nc.subnet_file).map_err(context)?;
    let plugin = exec::require_plugin(nc.delegate_type(), &args.cni_path).map_err(context)?;
    let dver = negotiate(&plugin, nc.cni_version).map_err(context)?;
    let bytes = config_bytes(delegate::render(nc, &subnet_env, dver)).map_err(context)?;
    log(format!(
        "DEL {}/{}: state damaged ({why}); releasing through delegate {} with the current netconf",
        att.container_id,
        att.ifname,
        plugin.display()
    ));
    exec::run(&plugin, env, &bytes).map(|_| ()).map_err(context)
}

fn cmd_del(args: &CmdArgs, nc: &NetConf) -> Result<(), CniError> {
    let att = attachment_of(args)?;
    let state = lock_state(nc)?;
    let Some(bytes) = state.load(att).map_err(|e| state_error(&nc.data_dir, e))? else {
        return del_flannel(args, nc, att);
    };
    let netns = existing_netns(args);
    let saved = match classify_own(&bytes, &nc.name) {
        SavedState::Ours(saved) => saved,
        // Another network's attachment of the same container and interface name (the
        // runtime's clean-up DEL after this network's ADD was refused): not ours to undo.
        SavedState::OtherNetwork(other) => {
            log(format!(
                "DEL {}/{}: {} belongs to network {}; leaving it",
                att.container_id,
                att.ifname,
                state.path_of(att).display(),
                other.as_deref().unwrap_or("(unnamed)")
            ));
            return del_flannel(args, nc, att);
        }
        // Released with the current netconf; the file goes only once that worked, so a
        // failure is retried by the runtime instead of leaking the address.
        SavedState::Unreadable(why) => {
            let why = format!("{} is damaged: {why}", state.path_of(att).display());
            del_rendered(
                args,
                nc,
                att,
                &why,
                &[("CNI_COMMAND", Some("DEL")), ("CNI_NETNS", netns)],
            )?;
            return state.remove(att).map_err(|e| state_error(&nc.data_dir, e));
        }
    };
    log(format!("DEL {}/{}", att.container_id, att.ifname));
    delegate_del(
        &saved,
        nc.cni_version,
        &args.cni_path,
        &[("CNI_COMMAND", Some("DEL")), ("CNI_NETNS", netns)],
        Some(nc),
    )?;
    state.remove(att).map_err(|e| state_error(&nc.data_dir, e))
}

/// CNI_NETNS if it is still a network namespace; DEL without it only releases the address
/// (the veth went with the namespace). A path left behind where the namespace was mounted
/// (an empty file) counts as gone: the bridge plugin accepts a missing path only.
fn existing_netns(args: &CmdArgs) -> Option<&str> {
    let netns = args.netns.as_deref().filter(|p| netns::is_netns(p));
    if netns.is_none() {
        if let Some(gone) = &args.netns {
            log(format!(
                "DEL: CNI_NETNS {gone} is no longer a network namespace; releasing the address only"
            ));
        }
    }
    netns
}

/// Looks for flannel's state of this attachment (see [`flannel`]); read errors are returned.
fn flannel_state(nc: &NetConf, att: &Attachment) -> Result<Option<flannel::Found>, CniError> {
    let dirs = flannel::data_dirs(nc);
    let found = flannel::lookup(&dirs, &att.container_id, &nc.name).map_err(|e| {
        CniError::new(
            code::IO,
            format!(
                "cannot read flannel's state for container {}",
                att.container_id
            ),
            format!(
                "{e}; looked in {}",
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })?;
    for why in &found.skipped {
        log(format!("flannel state: {why}"));
    }
    Ok(found.found)
}

/// DEL of an attachment vxmesh has no state for: if flannel's CNI plugin made it (its state
/// file for this network, see [`flannel`]), release it as flannel's DEL does — the delegate's
/// DEL with the saved bytes unchanged — and then remove flannel's file.
fn del_flannel(args: &CmdArgs, nc: &NetConf, att: &Attachment) -> Result<(), CniError> {
    let Some(found) = flannel_state(nc, att)? else {
        log(format!(
            "DEL {}/{}: no state, nothing to do",
            att.container_id, att.ifname
        ));
        return Ok(());
    };
    let dtype = saved_type(&found.config)?;
    let plugin = exec::require_plugin(dtype, &args.cni_path)?;
    log(format!(
        "DEL {}/{}: made by flannel's plugin ({}); releasing through delegate {}",
        att.container_id,
        att.ifname,
        found.path.display(),
        plugin.display()
    ));
    let netns = existing_netns(args);
    exec::run(
        &plugin,
        &[("CNI_COMMAND", Some("DEL")), ("CNI_NETNS", netns)],
        &found.bytes,
    )?;
    // flannel ignores a failure to remove its file here ("safe to continue during DEL"); a
    // file left behind only makes the next DEL repeat the delegate's (idempotent) DEL.
    if let Err(e) = flannel::remove(&found.path) {
        log(format!("cannot remove {}: {e}", found.path.display()));
    }
    Ok(())
}

fn cmd_check(args: &CmdArgs, nc: &NetConf) -> Result<(), CniError> {
    if !nc.cni_version.has_check() {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "config version does not allow CHECK",
            format!("cniVersion {} predates CHECK (0.4.0)", nc.cni_version),
        ));
    }
    let att = attachment_of(args)?;
    let netns = netns_of(args)?;
    if nc.prev_result.is_none() {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "invalid network config: field prevResult",
            "prevResult: missing; CHECK needs the result of the ADD",
        ));
    }
    let subnet_env = load_subnet_env(&nc.subnet_file)?;
    let state = lock_state(nc)?;
    let own = match state
        .load(att)
        .map_err(|e| state_error(&nc.data_dir, e))?
        .map(|b| classify_own(&b, &nc.name))
    {
        Some(SavedState::Ours(saved)) => Some(saved),
        Some(SavedState::Unreadable(why)) => {
            return Err(CniError::new(
                code::DECODE,
                format!(
                    "state of container {} interface {} is damaged",
                    att.container_id, att.ifname
                ),
                format!(
                    "{}: {why}; DEL the attachment (it is released with the current netconf) \
                     and ADD it again",
                    state.path_of(att).display()
                ),
            ))
        }
        // Another network's attachment is not this network's state.
        Some(SavedState::OtherNetwork(_)) | None => None,
    };
    // An attachment flannel's plugin made is checked with the config flannel saved (flannel's
    // own CHECK does nothing).
    let flannels = match own {
        Some(_) => None,
        None => flannel_state(nc, att)?.map(|f| f.config),
    };
    let saved = own.or(flannels).ok_or_else(|| {
        CniError::new(
            code::NO_STATE,
            format!(
                "no state for container {} interface {}",
                att.container_id, att.ifname
            ),
            format!(
                "{} is missing and flannel's plugin left no state for it: the attachment \
                     was not made on this node, or was deleted",
                state.path_of(att).display()
            ),
        )
    })?;
    if let Some(change) = delegate::subnet_change(&saved, &subnet_env) {
        let was = change.was;
        return Err(match change.now {
            Some(now) => CniError::new(
                code::SUBNET_CHANGED,
                format!("pod subnet {was} is no longer this node's subnet {now}"),
                "the node's lease changed since ADD; pods with addresses from the old subnet are \
                 unreachable and must be recreated",
            ),
            None => CniError::new(
                code::SUBNET_CHANGED,
                format!("pod subnet {was} is of a family this node no longer carries"),
                "the network config dropped the family since ADD (EnableIPv6 or EnableIPv4 \
                 turned off); the pod's address from it is unreachable: recreate the pod",
            ),
        });
    }
    if !netns::is_netns(netns) {
        return Err(CniError::new(
            code::INVALID_NETNS,
            format!("CNI_NETNS {netns} is not a network namespace"),
            "it does not exist, or is a file left where one was mounted",
        ));
    }
    let dtype = saved_type(&saved)?;
    let plugin = exec::require_plugin(dtype, &args.cni_path)?;
    let dver = negotiate(&plugin, nc.cni_version)?;
    if !dver.has_check() {
        log(format!(
            "delegate {dtype} speaks {dver}, which has no CHECK; skipping it"
        ));
        return Ok(());
    }
    // Routes without a gateway are looked up with the gateway IPAM installed them with; see
    // CniResult::fill_route_gateways.
    let prev = prev_result_with(nc, dver, CniResult::fill_route_gateways);
    let config = delegate::for_invocation(&saved, dver, prev);
    let bytes = config_bytes(config)?;
    exec::run(&plugin, &[("CNI_COMMAND", Some("CHECK"))], &bytes).map(|_| ())
}

fn require_1_1(nc: &NetConf, what: &str) -> Result<(), CniError> {
    if nc.cni_version.has_gc_and_status() {
        Ok(())
    } else {
        Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("config version does not allow {what}"),
            format!("cniVersion {} predates {what} (1.1.0)", nc.cni_version),
        ))
    }
}

/// A delegate to forward to, and the config to send it.
type Forward = (PathBuf, Map<String, Value>);

/// Renders a config for forwarding GC/STATUS, if the delegate speaks 1.1.0.
fn forwardable(
    args: &CmdArgs,
    nc: &NetConf,
    subnet_env: &SubnetEnv,
    what: &str,
) -> Result<Option<Forward>, CniError> {
    let plugin = exec::require_plugin(nc.delegate_type(), &args.cni_path)?;
    let supported = exec::supported_versions(&plugin, SpecVersion::V1_1_0.as_str())?;
    if !supported.iter().any(|v| v == SpecVersion::V1_1_0.as_str()) {
        log(format!(
            "delegate {} supports [{}], which predates {what}; not forwarding {what}",
            plugin.display(),
            supported.join(" ")
        ));
        return Ok(None);
    }
    Ok(Some((
        plugin,
        delegate::render(nc, subnet_env, SpecVersion::V1_1_0),
    )))
}

fn cmd_gc(args: &CmdArgs, nc: &NetConf) -> Result<(), CniError> {
    require_1_1(nc, "GC")?;
    let Some(valid) = &nc.valid_attachments else {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "invalid network config: field cni.dev/valid-attachments",
            "cni.dev/valid-attachments: missing; GC needs the list of attachments to keep \
             (an empty list removes all)",
        ));
    };
    let state = lock_state(nc)?;
    match state.sweep_temporaries() {
        Ok(0) => {}
        Ok(n) => log(format!(
            "GC: removed {n} temporary state file(s) left by killed calls"
        )),
        Err(e) => log(format!("GC: cannot sweep temporary state files: {e}")),
    }
    let mut errors: Vec<CniError> = Vec::new();
    let io = |name: &str, e: io::Error| CniError::new(code::IO, format!("{name}: {e}"), "");
    let attachments = state.list().map_err(|e| state_error(&nc.data_dir, e))?;
    for att in attachments {
        if valid.contains(&(att.container_id.clone(), att.ifname.clone())) {
            continue;
        }
        let name = state::file_name(&att);
        let bytes = match state.load(&att) {
            Ok(Some(b)) => b,
            Ok(None) => continue,
            Err(e) => {
                errors.push(io(&name, e));
                continue;
            }
        };
        let env: [EnvChange<'_>; 5] = [
            ("CNI_COMMAND", Some("DEL")),
            ("CNI_CONTAINERID", Some(att.container_id.as_str())),
            ("CNI_IFNAME", Some(att.ifname.as_str())),
            ("CNI_NETNS", None),
            ("CNI_ARGS", None),
        ];
        let released = match classify_own(&bytes, &nc.name) {
            SavedState::Ours(saved) => {
                log(format!("GC: removing stale attachment {name}"));
                delegate_del(&saved, nc.cni_version, &args.cni_path, &env, None)
            }
            // Several networks may share one dataDir; GC speaks for this network only.
            SavedState::OtherNetwork(_) => continue,
            // Whose it is cannot be told when the file names no network; one that names
            // this network is released with the current netconf, as DEL does.
            SavedState::Unreadable(why) => {
                if saved_name(&bytes).as_deref() != Some(nc.name.as_str()) {
                    log(format!(
                        "GC: state file {name} is damaged ({why}) and names no network; left for its network's DEL"
                    ));
                    continue;
                }
                del_rendered(args, nc, &att, &format!("{name}: {why}"), &env)
            }
        };
        match released {
            Ok(()) => {
                if let Err(e) = state.remove(&att) {
                    errors.push(io(&name, e));
                }
            }
            Err(e) => errors.push(CniError::new(
                e.code,
                format!("{name}: {}", e.msg),
                e.details,
            )),
        }
    }
    errors.extend(gc_flannel(args, nc, valid));
    // Forwarded under the lock too, so an ADD in flight cannot lose its fresh IPAM
    // reservation to a delegate GC that does not know it yet.
    match load_subnet_env(&nc.subnet_file) {
        Ok(subnet_env) => match forwardable(args, nc, &subnet_env, "GC") {
            Ok(Some((plugin, mut config))) => {
                let list: Vec<Value> = valid
                    .iter()
                    .map(|(c, i)| json!({"containerID": c.as_str(), "ifname": i.as_str()}))
                    .collect();
                config.insert("cni.dev/valid-attachments".into(), Value::Array(list));
                let sent = config_bytes(config)
                    .and_then(|bytes| exec::run(&plugin, &[("CNI_COMMAND", Some("GC"))], &bytes));
                if let Err(e) = sent {
                    errors.push(e);
                }
            }
            Ok(None) => {}
            Err(e) => errors.push(e),
        },
        Err(e) => log(format!("GC: not forwarding to the delegate: {e}")),
    }
    drop(state);

    // One problem keeps its own code; several are reported together as an I/O failure.
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        n => {
            let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
            Err(CniError::new(
                code::IO,
                format!("GC left {n} problems"),
                all.join("; "),
            ))
        }
    }
}

/// GC of the attachments flannel's plugin made for this network. flannel's file names only
/// the container, so one is kept while its container has any valid attachment. A stale one is
/// released as its DEL would be, once for each interface host-local has reserved an address
/// for that container (read from host-local's reservation files: the DEL must name the
/// interface); then flannel's file is removed. With another IPAM the interface cannot be
/// known, and the file is left for the runtime's DEL.
fn gc_flannel(
    args: &CmdArgs,
    nc: &NetConf,
    valid: &std::collections::BTreeSet<(ContainerId, IfName)>,
) -> Vec<CniError> {
    let live: std::collections::BTreeSet<&ContainerId> = valid.iter().map(|(c, _)| c).collect();
    let io =
        |what: &Path, e: io::Error| CniError::new(code::IO, format!("{}: {e}", what.display()), "");
    let mut errors = Vec::new();
    for dir in flannel::data_dirs(nc) {
        let cids = match flannel::list(&dir) {
            Ok(c) => c,
            Err(e) => {
                errors.push(io(&dir, e));
                continue;
            }
        };
        for cid in cids.into_iter().filter(|c| !live.contains(c)) {
            let path = dir.join(cid.as_str());
            let bytes = match state::read_capped(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    errors.push(io(&path, e));
                    continue;
                }
            };
            let flannel::Saved::Ours(config) = flannel::classify(&bytes, &nc.name) else {
                continue;
            };
            let Some(reservations) = flannel::host_local_dir(&config) else {
                log(format!(
                    "GC: {} (made by flannel's plugin) names no interface and its IPAM is not                      host-local; left in place: the runtime's DEL releases it",
                    path.display()
                ));
                continue;
            };
            let reserved = match flannel::read_reservations(&reservations) {
                Ok(files) => flannel::reserved_for(&cid, files.iter().map(String::as_str)),
                Err(e) => {
                    errors.push(io(&reservations, e));
                    continue;
                }
            };
            let mut ifnames: Vec<&str> = reserved.ifnames.iter().map(String::as_str).collect();
            if reserved.legacy && ifnames.is_empty() {
                // host-local releases a reservation without an interface name for any name.
                ifnames.push("eth0");
            }
            log(format!(
                "GC: removing stale attachment {} made by flannel's plugin (interfaces: [{}])",
                path.display(),
                ifnames.join(" ")
            ));
            let mut released = true;
            for ifname in ifnames {
                let env: [EnvChange<'_>; 5] = [
                    ("CNI_COMMAND", Some("DEL")),
                    ("CNI_CONTAINERID", Some(cid.as_str())),
                    ("CNI_IFNAME", Some(ifname)),
                    ("CNI_NETNS", None),
                    ("CNI_ARGS", None),
                ];
                let run = saved_type(&config)
                    .and_then(|t| exec::require_plugin(t, &args.cni_path))
                    .and_then(|plugin| exec::run(&plugin, &env, &bytes));
                if let Err(e) = run {
                    released = false;
                    errors.push(CniError::new(
                        e.code,
                        format!("{}: {}", path.display(), e.msg),
                        e.details,
                    ));
                }
            }
            if released {
                if let Err(e) = flannel::remove(&path) {
                    errors.push(io(&path, e));
                }
            }
        }
    }
    errors
}

fn cmd_status(args: &CmdArgs, nc: &NetConf) -> Result<(), CniError> {
    require_1_1(nc, "STATUS")?;
    let not_available = |e: CniError| CniError::new(code::NOT_AVAILABLE, e.msg, e.details);
    let subnet_env = load_subnet_env(&nc.subnet_file).map_err(not_available)?;
    let Some((plugin, config)) =
        forwardable(args, nc, &subnet_env, "STATUS").map_err(not_available)?
    else {
        return Ok(());
    };
    let bytes = config_bytes(config)?;
    exec::run(&plugin, &[("CNI_COMMAND", Some("STATUS"))], &bytes).map(|_| ())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_data_dir_is_try_again_later_naming_the_holder() {
        let e = busy_error("/var/lib/cni/vxmesh", Duration::from_secs(60), Some(4242));
        assert_eq!(e.code, code::TRY_AGAIN_LATER);
        assert!(e.msg.contains("/var/lib/cni/vxmesh is locked"), "{}", e.msg);
        assert!(
            e.details.contains("process 4242 has held it for over 60 s"),
            "{}",
            e.details
        );
        assert!(e.details.contains("/proc/4242/cmdline"), "{}", e.details);
        let e = busy_error("/d", Duration::from_secs(60), None);
        assert!(e.details.contains("another process"), "{}", e.details);
    }

    /// xorshift64*: deterministic pseudo-random bytes without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % (n.max(1) as u64)).unwrap_or(0)
        }
    }

    /// Flips, inserts, deletes and truncates bytes of a valid input.
    fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
        const INTERESTING: &[u8] = b"{}[]\":,0-9eE.\\ \x00\xff/";
        let mut v = input.to_vec();
        for _ in 0..=rng.below(4) {
            let at = rng.below(v.len() + 1);
            match rng.below(4) {
                0 if at < v.len() => v[at] = INTERESTING[rng.below(INTERESTING.len())],
                1 => v.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
                2 if at < v.len() => {
                    v.remove(at);
                }
                _ => v.truncate(at),
            }
        }
        v
    }

    const NETCONF: &[u8] = br#"{"cniVersion":"1.1.0","name":"vxmesh","type":"vxmesh","subnetFile":"/nonexistent/subnet.env","dataDir":"/nonexistent/data","delegate":{"bridge":"cni0","hairpinMode":true,"mtu":1400},"ipam":{"routes":[{"dst":"192.168.0.0/16"}]},"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"interface":0,"address":"10.1.0.2/24"}]},"cni.dev/valid-attachments":[{"containerID":"c","ifname":"eth0"}]}"#;
    const SUBNET_ENV: &[u8] = b"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";
    const RESULT: &[u8] = br#"{"cniVersion":"0.4.0","interfaces":[{"name":"cni0","mac":"aa:bb:cc:dd:ee:ff"},{"name":"eth0","mac":"","sandbox":"/run/netns/p"}],"ips":[{"version":"4","interface":1,"address":"10.244.3.2/24","gateway":"10.244.3.1"}],"routes":[{"dst":"10.244.0.0/16","mtu":1400}],"dns":{"nameservers":["10.0.0.10"]}}"#;

    #[test]
    fn mutated_inputs_never_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let versions = SpecVersion::ALL;
        for i in 0..3000 {
            let conf = mutate(&mut rng, NETCONF);
            if let Ok(nc) = netconf::parse(&conf) {
                let env = SubnetEnv::parse(&mutate(&mut rng, SUBNET_ENV));
                if let Ok(env) = env {
                    let v = versions[i % versions.len()];
                    let rendered = delegate::render(&nc, &env, v);
                    let _ = delegate::saved_subnet(&rendered);
                }
            }
            if let Ok(r) = CniResult::from_slice(&mutate(&mut rng, RESULT)) {
                for v in versions {
                    let _ = r.to_layout(v);
                }
                let mut r = r;
                r.fill_route_gateways();
            }
            let _ = netconf::peek_version(&conf);
            // The whole ADD path up to the namespace check: nothing is created because
            // CNI_NETNS does not exist and CNI_PATH is empty.
            let out = run(
                |k| match k {
                    "CNI_COMMAND" => Some("ADD".into()),
                    "CNI_CONTAINERID" => Some("fuzz".into()),
                    "CNI_NETNS" => Some("/nonexistent/netns".into()),
                    "CNI_IFNAME" => Some("eth0".into()),
                    "CNI_PATH" => Some("/nonexistent/bin".into()),
                    _ => None,
                },
                || Ok(conf.clone()),
            );
            assert_eq!(out.exit_code, 1);
            let err: Value = serde_json::from_str(&out.stdout).unwrap();
            assert!(err["code"].is_u64(), "{}", out.stdout);
        }
    }

    #[test]
    fn an_endless_stdin_is_an_io_error() {
        use std::io::Read;
        let max = crate::state::MAX_FILE_BYTES;
        let endless = io::repeat(b' ');
        let e = read_netconf(endless).unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
        assert_eq!(
            read_netconf(io::repeat(b' ').take(max)).unwrap().len() as u64,
            max
        );
        let out = run(
            |k| match k {
                "CNI_COMMAND" => Some("ADD".into()),
                "CNI_CONTAINERID" => Some("big".into()),
                "CNI_NETNS" => Some("/nonexistent/netns".into()),
                "CNI_IFNAME" => Some("eth0".into()),
                "CNI_PATH" => Some("/nonexistent/bin".into()),
                _ => None,
            },
            || read_netconf(io::repeat(b' ')),
        );
        assert_eq!(out.exit_code, 1);
        let err: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(err["code"], code::IO, "{}", out.stdout);
        assert!(
            err["details"].as_str().unwrap().contains("more than"),
            "{}",
            out.stdout
        );
    }

    #[test]
    fn version_answers_without_stdin() {
        let out = run(
            |k| (k == "CNI_COMMAND").then(|| "VERSION".to_string()),
            || Ok(Vec::new()),
        );
        assert_eq!(out.exit_code, 0);
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 5);
    }
}
