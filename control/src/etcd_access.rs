//! How to reach etcd: endpoints, TLS files and credentials — checked before any
//! connection is made, so a wrong combination of flags is one clear error at start-up
//! instead of an opaque transport error later.
//!
//! The flags mirror flanneld's (`--etcd-cafile`, `--etcd-certfile`, `--etcd-keyfile`,
//! `--etcd-username`, `--etcd-password`). The checks here are pure: [`EtcdAccess::new`]
//! validates the flag combination; [`TlsMaterial::check`] validates PEM bytes.
//! Reading the files is the caller's (the registry's) job.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error("--etcd-endpoints is empty: give at least one, e.g. http://127.0.0.1:2379")]
    NoEndpoints,
    #[error(
        "etcd endpoint {0:?} has no scheme: write http://HOST:2379, or https://HOST:2379 for TLS"
    )]
    NoScheme(String),
    #[error("etcd endpoints mix http:// and https:// ({0}); use one scheme for every member")]
    MixedSchemes(String),
    #[error("{flags} given but the etcd endpoints are http:// ({endpoints}); use https:// endpoints for TLS")]
    TlsWithoutHttps {
        flags: &'static str,
        endpoints: String,
    },
    #[error(
        "--etcd-certfile given without --etcd-keyfile (a client certificate needs its private key)"
    )]
    CertWithoutKey,
    #[error(
        "--etcd-keyfile given without --etcd-certfile (a private key needs its client certificate)"
    )]
    KeyWithoutCert,
    #[error("--etcd-password given without --etcd-username")]
    PasswordWithoutUser,
    #[error("--etcd-username {0:?} given without --etcd-password (set VXMESHD_ETCD_PASSWORD in the EnvironmentFile rather than on the command line)")]
    UserWithoutPassword(String),
    #[error("cannot read {flag} {path}: {error}")]
    Read {
        flag: &'static str,
        path: PathBuf,
        error: String,
    },
    #[error("{flag} {path} holds no PEM {expected} block (expected a line \"-----BEGIN {expected}-----\")")]
    NotPem {
        flag: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
}

/// TLS files for https:// endpoints. Without a CA file the system's roots are used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    /// Client certificate and its key (for etcd's `--client-cert-auth`).
    pub client: Option<(PathBuf, PathBuf)>,
}

/// etcd user and password (etcd's `auth enable`).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Everything needed to connect, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdAccess {
    pub endpoints: Vec<String>,
    /// Some exactly when the endpoints are https://.
    pub tls: Option<TlsFiles>,
    pub auth: Option<Credentials>,
}

/// The flags as given (before validation).
#[derive(Debug, Clone, Default)]
pub struct AccessFlags {
    pub endpoints: Vec<String>,
    pub cafile: Option<PathBuf>,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
}

fn non_empty<T: AsRef<str>>(s: Option<T>) -> Option<T> {
    s.filter(|v| !v.as_ref().is_empty())
}

fn non_empty_path(p: Option<PathBuf>) -> Option<PathBuf> {
    p.filter(|v| !v.as_os_str().is_empty())
}

impl EtcdAccess {
    /// Plain http:// endpoints, no credentials (tests, local etcd).
    pub fn plain(endpoints: &[String]) -> EtcdAccess {
        EtcdAccess {
            endpoints: endpoints.to_vec(),
            tls: None,
            auth: None,
        }
    }

    /// Validates a combination of flags. Empty strings count as absent (an
    /// EnvironmentFile line `VXMESHD_ETCD_CAFILE=` means "not set").
    pub fn new(flags: AccessFlags) -> Result<EtcdAccess, AccessError> {
        let endpoints: Vec<String> = flags
            .endpoints
            .iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(AccessError::NoEndpoints);
        }
        let mut https = 0;
        for e in &endpoints {
            if e.starts_with("https://") {
                https += 1;
            } else if !e.starts_with("http://") {
                return Err(AccessError::NoScheme(e.clone()));
            }
        }
        let joined = endpoints.join(",");
        if https != 0 && https != endpoints.len() {
            return Err(AccessError::MixedSchemes(joined));
        }
        let ca = non_empty_path(flags.cafile);
        let cert = non_empty_path(flags.certfile);
        let key = non_empty_path(flags.keyfile);
        let client = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (Some(_), None) => return Err(AccessError::CertWithoutKey),
            (None, Some(_)) => return Err(AccessError::KeyWithoutCert),
            (None, None) => None,
        };
        let tls = if https == 0 {
            let flags = match (ca.is_some(), client.is_some()) {
                (true, true) => Some("--etcd-cafile, --etcd-certfile and --etcd-keyfile"),
                (true, false) => Some("--etcd-cafile"),
                (false, true) => Some("--etcd-certfile and --etcd-keyfile"),
                (false, false) => None,
            };
            if let Some(flags) = flags {
                return Err(AccessError::TlsWithoutHttps {
                    flags,
                    endpoints: joined,
                });
            }
            None
        } else {
            Some(TlsFiles { ca, client })
        };
        let auth = match (non_empty(flags.username), non_empty(flags.password)) {
            (Some(username), Some(password)) => Some(Credentials { username, password }),
            (Some(u), None) => return Err(AccessError::UserWithoutPassword(u)),
            (None, Some(_)) => return Err(AccessError::PasswordWithoutUser),
            (None, None) => None,
        };
        Ok(EtcdAccess {
            endpoints,
            tls,
            auth,
        })
    }

    /// One line for the log: how etcd is reached (never the password).
    pub fn describe(&self) -> String {
        let mut s = self.endpoints.join(",");
        match &self.tls {
            None => {}
            Some(t) => {
                s.push_str(" over TLS (");
                match &t.ca {
                    Some(ca) => s.push_str(&format!("CA {}", ca.display())),
                    None => s.push_str("system CA roots"),
                }
                if let Some((cert, _)) = &t.client {
                    s.push_str(&format!(", client certificate {}", cert.display()));
                }
                s.push(')');
            }
        }
        if let Some(a) = &self.auth {
            s.push_str(&format!(" as etcd user {:?}", a.username));
        }
        s
    }

    /// What to check when a connection fails, for the error message.
    pub fn hint(&self) -> &'static str {
        match (&self.tls, &self.auth) {
            (None, None) => "is etcd reachable there?",
            (Some(_), None) => "is etcd reachable there, and do --etcd-cafile/--etcd-certfile/--etcd-keyfile match its certificates?",
            (None, Some(_)) => "is etcd reachable there, and are --etcd-username/--etcd-password right?",
            (Some(_), Some(_)) => "is etcd reachable there, do the --etcd-cafile/--etcd-certfile/--etcd-keyfile match its certificates, and are --etcd-username/--etcd-password right?",
        }
    }
}

/// The TLS files' contents, checked to be PEM of the right kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsMaterial {
    pub ca: Option<Vec<u8>>,
    /// Client certificate chain and private key.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

const CERT: &str = "CERTIFICATE";
const KEY: &str = "PRIVATE KEY";

fn has_pem_block(bytes: &[u8], kind: &str) -> bool {
    // "-----BEGIN CERTIFICATE-----", or for keys any of "PRIVATE KEY",
    // "RSA PRIVATE KEY", "EC PRIVATE KEY".
    let text = String::from_utf8_lossy(bytes);
    text.lines().any(|l| {
        let l = l.trim();
        l.starts_with("-----BEGIN ") && l.ends_with(&format!("{kind}-----"))
    })
}

impl TlsMaterial {
    /// Checks file contents (as read from `files`).
    pub fn check(
        files: &TlsFiles,
        ca: Option<Vec<u8>>,
        client: Option<(Vec<u8>, Vec<u8>)>,
    ) -> Result<TlsMaterial, AccessError> {
        if let (Some(path), Some(bytes)) = (&files.ca, &ca) {
            if !has_pem_block(bytes, CERT) {
                return Err(not_pem("--etcd-cafile", path, CERT));
            }
        }
        if let (Some((cp, kp)), Some((cert, key))) = (&files.client, &client) {
            if !has_pem_block(cert, CERT) {
                return Err(not_pem("--etcd-certfile", cp, CERT));
            }
            if !has_pem_block(key, KEY) {
                return Err(not_pem("--etcd-keyfile", kp, KEY));
            }
        }
        Ok(TlsMaterial { ca, client })
    }

    /// Reads and checks the files (the only I/O in this module).
    pub fn load(files: &TlsFiles) -> Result<TlsMaterial, AccessError> {
        let read = |flag: &'static str, p: &Path| {
            std::fs::read(p).map_err(|e| AccessError::Read {
                flag,
                path: p.to_path_buf(),
                error: e.to_string(),
            })
        };
        let ca = files
            .ca
            .as_deref()
            .map(|p| read("--etcd-cafile", p))
            .transpose()?;
        let client = match &files.client {
            Some((c, k)) => Some((read("--etcd-certfile", c)?, read("--etcd-keyfile", k)?)),
            None => None,
        };
        TlsMaterial::check(files, ca, client)
    }
}

fn not_pem(flag: &'static str, path: &Path, expected: &'static str) -> AccessError {
    AccessError::NotPem {
        flag,
        path: path.to_path_buf(),
        expected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(endpoints: &[&str]) -> AccessFlags {
        AccessFlags {
            endpoints: endpoints.iter().map(|s| s.to_string()).collect(),
            ..AccessFlags::default()
        }
    }

    #[test]
    fn plain_http_needs_nothing_else() {
        let a =
            EtcdAccess::new(flags(&["http://10.0.0.1:2379", " http://10.0.0.2:2379 "])).unwrap();
        assert_eq!(
            a.endpoints,
            ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        assert_eq!(a.tls, None);
        assert_eq!(a.auth, None);
        assert_eq!(a.describe(), "http://10.0.0.1:2379,http://10.0.0.2:2379");
    }

    #[test]
    fn https_alone_uses_system_roots() {
        let a = EtcdAccess::new(flags(&["https://etcd:2379"])).unwrap();
        assert_eq!(
            a.tls,
            Some(TlsFiles {
                ca: None,
                client: None
            })
        );
        assert!(a.describe().contains("system CA roots"), "{}", a.describe());
    }

    #[test]
    fn full_tls_and_auth() {
        let mut f = flags(&["https://a:2379", "https://b:2379"]);
        f.cafile = Some("/etc/vxmesh/ca.pem".into());
        f.certfile = Some("/etc/vxmesh/client.pem".into());
        f.keyfile = Some("/etc/vxmesh/client-key.pem".into());
        f.username = Some("vxmesh".into());
        f.password = Some("s3cret".into());
        let a = EtcdAccess::new(f).unwrap();
        let tls = a.tls.clone().unwrap();
        assert_eq!(tls.ca.as_deref(), Some(Path::new("/etc/vxmesh/ca.pem")));
        assert!(tls.client.is_some());
        let d = a.describe();
        assert!(d.contains("CA /etc/vxmesh/ca.pem"), "{d}");
        assert!(
            d.contains("client certificate /etc/vxmesh/client.pem"),
            "{d}"
        );
        assert!(d.contains("\"vxmesh\""), "{d}");
        assert!(
            !d.contains("s3cret"),
            "the password never reaches the log: {d}"
        );
        assert!(!format!("{a:?}").contains("s3cret"), "nor Debug output");
    }

    #[test]
    fn empty_values_count_as_absent() {
        let mut f = flags(&["http://a:2379", ""]);
        f.cafile = Some(PathBuf::new());
        f.username = Some(String::new());
        f.password = Some(String::new());
        let a = EtcdAccess::new(f).unwrap();
        assert_eq!(a.endpoints, ["http://a:2379"]);
        assert_eq!((a.tls, a.auth), (None, None));
    }

    #[test]
    fn bad_combinations_are_named() {
        let cases: Vec<(AccessFlags, AccessError, &str)> = vec![
            (
                flags(&[]),
                AccessError::NoEndpoints,
                "--etcd-endpoints is empty",
            ),
            (
                flags(&["10.0.0.1:2379"]),
                AccessError::NoScheme("10.0.0.1:2379".into()),
                "write http://HOST:2379",
            ),
            (
                flags(&["http://a:2379", "https://b:2379"]),
                AccessError::MixedSchemes("http://a:2379,https://b:2379".into()),
                "use one scheme",
            ),
            (
                AccessFlags {
                    cafile: Some("/ca.pem".into()),
                    ..flags(&["http://a:2379"])
                },
                AccessError::TlsWithoutHttps {
                    flags: "--etcd-cafile",
                    endpoints: "http://a:2379".into(),
                },
                "use https:// endpoints",
            ),
            (
                AccessFlags {
                    certfile: Some("/c.pem".into()),
                    keyfile: Some("/k.pem".into()),
                    ..flags(&["http://a:2379"])
                },
                AccessError::TlsWithoutHttps {
                    flags: "--etcd-certfile and --etcd-keyfile",
                    endpoints: "http://a:2379".into(),
                },
                "--etcd-certfile and --etcd-keyfile given",
            ),
            (
                AccessFlags {
                    certfile: Some("/c.pem".into()),
                    ..flags(&["https://a:2379"])
                },
                AccessError::CertWithoutKey,
                "without --etcd-keyfile",
            ),
            (
                AccessFlags {
                    keyfile: Some("/k.pem".into()),
                    ..flags(&["https://a:2379"])
                },
                AccessError::KeyWithoutCert,
                "without --etcd-certfile",
            ),
            (
                AccessFlags {
                    username: Some("vxmesh".into()),
                    ..flags(&["http://a:2379"])
                },
                AccessError::UserWithoutPassword("vxmesh".into()),
                "VXMESHD_ETCD_PASSWORD",
            ),
            (
                AccessFlags {
                    password: Some("pw".into()),
                    ..flags(&["http://a:2379"])
                },
                AccessError::PasswordWithoutUser,
                "without --etcd-username",
            ),
        ];
        for (f, want, text) in cases {
            let got = EtcdAccess::new(f).unwrap_err();
            assert_eq!(got, want);
            assert!(got.to_string().contains(text), "{got}");
            assert!(!got.to_string().contains("\"pw\""), "{got}");
        }
    }

    const CA_PEM: &[u8] = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY_PEM: &[u8] = b"-----BEGIN EC PRIVATE KEY-----\nMHc\n-----END EC PRIVATE KEY-----\n";

    fn files() -> TlsFiles {
        TlsFiles {
            ca: Some("/ca.pem".into()),
            client: Some(("/c.pem".into(), "/k.pem".into())),
        }
    }

    #[test]
    fn pem_contents_are_checked_by_kind() {
        let ok = TlsMaterial::check(
            &files(),
            Some(CA_PEM.to_vec()),
            Some((CA_PEM.to_vec(), KEY_PEM.to_vec())),
        );
        assert!(ok.is_ok());
        // Key and certificate swapped: the key file holds no private key.
        let e = TlsMaterial::check(
            &files(),
            Some(CA_PEM.to_vec()),
            Some((CA_PEM.to_vec(), CA_PEM.to_vec())),
        )
        .unwrap_err();
        assert_eq!(e, not_pem("--etcd-keyfile", Path::new("/k.pem"), KEY));
        // A DER file, or garbage, as the CA.
        let e = TlsMaterial::check(&files(), Some(vec![0x30, 0x82, 0xff, 0x00]), None).unwrap_err();
        assert!(
            e.to_string()
                .contains("--etcd-cafile /ca.pem holds no PEM CERTIFICATE"),
            "{e}"
        );
        let e = TlsMaterial::check(&files(), None, Some((KEY_PEM.to_vec(), KEY_PEM.to_vec())))
            .unwrap_err();
        assert_eq!(e, not_pem("--etcd-certfile", Path::new("/c.pem"), CERT));
    }

    #[test]
    fn unreadable_files_name_the_flag() {
        let f = TlsFiles {
            ca: Some("/nonexistent/vxmesh-ca.pem".into()),
            client: None,
        };
        let e = TlsMaterial::load(&f).unwrap_err();
        let s = e.to_string();
        assert!(
            s.starts_with("cannot read --etcd-cafile /nonexistent/vxmesh-ca.pem"),
            "{s}"
        );
    }

    proptest::proptest! {
        #[test]
        fn validation_never_panics(
            eps in proptest::collection::vec("\\PC{0,24}", 0..4),
            ca in proptest::option::of("\\PC{0,8}"),
            user in proptest::option::of("\\PC{0,8}"),
            pw in proptest::option::of("\\PC{0,8}"),
        ) {
            let _ = EtcdAccess::new(AccessFlags {
                endpoints: eps,
                cafile: ca.map(PathBuf::from),
                username: user,
                password: pw,
                ..AccessFlags::default()
            });
        }
    }
}
