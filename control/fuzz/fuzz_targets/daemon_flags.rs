//! `flags::parse` over arbitrary command lines and environments (what a unit file's
//! `ExecStart=` and `EnvironmentFile=` may hold): no panic; accepted settings read back
//! from their canonical form as themselves.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vxmesh_control::flags::{parse, Invocation};

fuzz_target!(|data: &[u8]| {
    // Words separated by NUL; a word with '=' after a 0x01 marker is a variable.
    let text = String::from_utf8_lossy(data);
    let mut args = Vec::new();
    let mut env = Vec::new();
    for w in text.split('\0') {
        match w.strip_prefix('\u{1}').and_then(|v| v.split_once('=')) {
            Some((k, v)) => env.push((k.to_string(), v.to_string())),
            None => args.push(w.to_string()),
        }
    }
    if let Ok(Invocation::Run(f)) = parse(&args, &env) {
        let canonical = f.canonical();
        match parse(&canonical, &[]) {
            Ok(Invocation::Run(g)) => assert_eq!(canonical, g.canonical()),
            other => panic!("{canonical:?} did not read back: {other:?}"),
        }
    }
});
