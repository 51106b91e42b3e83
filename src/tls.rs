//! TLS: PEM certificates and keys read from files, and the rustls configurations built from
//! them: the server's (its HTTPS port and its worker port) and the clients' (the CLI and
//! `faasd worker --tls`), which trust the system's roots or one CA file.
//!
//! The crypto provider is rustls' `ring` one, named explicitly: nothing depends on a
//! process-wide default being installed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{CertificateError, ClientConfig, RootCertStore, ServerConfig};

/// What went wrong loading certificates or keys, or building a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A PEM file cannot be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it cannot be read.
        source: std::io::Error,
    },
    /// A PEM file's contents are not what it should hold.
    #[error("{path} is not a valid {what} file: {cause}")]
    Pem {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        cause: String,
    },
    /// The certificate and the key do not make a usable server identity.
    #[error("the certificate {cert} and the key {key} cannot be used together: {source}")]
    Identity {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' complaint.
        source: rustls::Error,
    },
    /// A CA certificate cannot be used as a trust root.
    #[error("the CA certificate in {path} cannot be trusted as a root: {source}")]
    Root {
        /// The CA file.
        path: PathBuf,
        /// rustls' complaint.
        source: rustls::Error,
    },
    /// The system's root certificates cannot be loaded.
    #[error(
        "cannot load the system's root certificates ({cause}); pass the server's CA certificate with --cacert FILE"
    )]
    SystemRoots {
        /// Why they cannot be loaded.
        cause: String,
    },
    /// A host cannot be checked against a certificate.
    #[error("{host:?} is not a host name or IP address a certificate can name")]
    ServerName {
        /// The host as given.
        host: String,
    },
    /// The protocol versions cannot be set (an internal inconsistency of the provider).
    #[error("cannot set up TLS: {source}")]
    Versions {
        /// rustls' complaint.
        source: rustls::Error,
    },
}

/// The crypto provider of every configuration built here.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a whole PEM file, naming `what` it should hold if it cannot be read.
fn read_pem(path: &Path, what: &'static str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// The certificates in a PEM file (at least one).
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    const WHAT: &str = "certificate";
    let pem = read_pem(path, WHAT)?;
    let invalid = |cause: String| Error::Pem {
        what: WHAT,
        path: path.to_owned(),
        cause,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(e.to_string()))?;
    if certs.is_empty() {
        return Err(invalid(
            "it holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    const WHAT: &str = "private key";
    let pem = read_pem(path, WHAT)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| Error::Pem {
        what: WHAT,
        path: path.to_owned(),
        cause: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "it holds no PEM private key (PKCS#8, PKCS#1 or SEC1)".into()
            }
            other => other.to_string(),
        },
    })
}

/// The server's TLS configuration from its certificate chain and key files.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, Error> {
    let chain = load_certificates(cert)?;
    let private_key = load_private_key(key)?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| Error::Versions { source })?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|source| Error::Identity {
            cert: cert.to_owned(),
            key: key.to_owned(),
            source,
        })?;
    Ok(Arc::new(config))
}

/// A client's TLS configuration: it trusts the certificates in `cacert` only, or without one
/// the system's roots.
pub fn client_config(cacert: Option<&Path>) -> Result<Arc<ClientConfig>, Error> {
    let roots = match cacert {
        Some(path) => ca_roots(path)?,
        None => system_roots()?,
    };
    Ok(Arc::new(client_config_with_roots(roots)?))
}

/// A client configuration that trusts no certificate: for clients that never make a TLS
/// connection but need a configuration to be built.
pub fn client_config_trusting_nothing() -> Result<ClientConfig, Error> {
    client_config_with_roots(RootCertStore::empty())
}

/// A client configuration that trusts `roots`.
fn client_config_with_roots(roots: RootCertStore) -> Result<ClientConfig, Error> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| Error::Versions { source })?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The roots in a CA file.
fn ca_roots(path: &Path) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for cert in load_certificates(path)? {
        roots.add(cert).map_err(|source| Error::Root {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(roots)
}

/// The system's roots (its CA bundle, or `SSL_CERT_FILE` / `SSL_CERT_DIR`). Certificates the
/// system store holds but rustls cannot parse are skipped, as long as some remain.
fn system_roots() -> Result<RootCertStore, Error> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let cause = match found.errors.first() {
            Some(e) => e.to_string(),
            None => "none found".into(),
        };
        return Err(Error::SystemRoots { cause });
    }
    Ok(roots)
}

/// The name a server's certificate is checked against: the host of `host:port` (a DNS name or
/// an IP address, IPv6 in brackets).
pub fn server_name(address: &str) -> Result<ServerName<'static>, Error> {
    let host = match address.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => address,
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_owned()).map_err(|_| Error::ServerName {
        host: host.to_owned(),
    })
}

/// Whether `err`, or any error under it, is a certificate the client did not accept: the
/// server's certificate is signed by a CA it does not trust, expired, or names another host.
pub fn is_certificate_error(err: &(dyn std::error::Error + 'static)) -> bool {
    certificate_error(err).is_some()
}

/// The refusal of the server's certificate in `err` or under it, if that is what failed.
fn certificate_error<'e>(
    err: &'e (dyn std::error::Error + 'static),
) -> Option<&'e CertificateError> {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(rustls::Error::InvalidCertificate(refused)) =
            err.downcast_ref::<rustls::Error>()
        {
            return Some(refused);
        }
        // An `io::Error` hides the error it wraps from `source()`: look inside it.
        let inside = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| certificate_error(inner));
        if inside.is_some() {
            return inside;
        }
        next = err.source();
    }
    None
}

/// What to tell a person whose client refused the server's certificate (found in `err` or under
/// it), with what to do about it; `None` when no certificate was refused.
pub fn explain_certificate_error(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let refused = certificate_error(err)?;
    Some(match refused {
        CertificateError::UnknownIssuer | CertificateError::BadSignature => "the server's certificate is not signed by a CA this client trusts: pass the certificate of the CA that signed it (for a self-signed certificate, the certificate itself) with --cacert FILE or FAASD_CACERT".into(),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => format!("the server's certificate does not name the host this client connects to ({refused}): connect by a name or address the certificate holds in its subjectAltName, or make one that holds it"),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } | CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => format!("the server's certificate is outside its validity period ({refused}): renew it, or check this machine's clock"),
        other if is_ca_as_leaf(other) => CA_AS_LEAF.into(),
        other => format!("the server's certificate was refused: {other}"),
    })
}

/// Why a self-signed certificate marked as a CA cannot be a server's, and how to make one.
const CA_AS_LEAF: &str = "the server's certificate is marked as a CA's (basicConstraints CA:TRUE, which `openssl req -x509` sets unless told otherwise), and faasd's clients (rustls) refuse a CA's certificate as a server's own, though some others accept it: make it with `-addext basicConstraints=critical,CA:FALSE`, or sign a server certificate with that CA (docs/security.md)";

/// Whether `refused` is webpki's refusal of a CA certificate as a server's own.
fn is_ca_as_leaf(refused: &CertificateError) -> bool {
    matches!(refused, CertificateError::Other(other) if other.to_string().contains("CaUsedAsEndEntity"))
}

/// Why no client could accept the certificate chain in `cert` as a server's, whatever it
/// trusts: today, a leaf marked as a CA's (what `openssl req -x509` makes by default). `serve`
/// warns of it at start, since clients would only say so at their handshake.
pub fn unusable_server_certificate(cert: &Path) -> Option<&'static str> {
    let chain = load_certificates(cert).ok()?;
    let (leaf, rest) = chain.split_first()?;
    let mut roots = RootCertStore::empty();
    roots.add(chain.last()?.clone()).ok()?;
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .ok()?;
    let name = ServerName::try_from("localhost").ok()?;
    let now = rustls::pki_types::UnixTime::now();
    match verifier.verify_server_cert(leaf, rest, &name, &[], now) {
        Err(rustls::Error::InvalidCertificate(refused)) if is_ca_as_leaf(&refused) => {
            Some(CA_AS_LEAF)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `localhost` and 127.0.0.1 and its key, as PEM files.
    fn identity(dir: &Path) -> (PathBuf, PathBuf) {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(names).expect("generate");
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, signing_key.serialize_pem()).expect("write key");
        (cert_path, key_path)
    }

    #[test]
    fn a_generated_identity_makes_a_server_and_a_client_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = identity(dir.path());
        server_config(&cert, &key).expect("server config");
        client_config(Some(&cert)).expect("client config");
    }

    #[test]
    fn a_missing_or_invalid_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = identity(dir.path());
        let missing = dir.path().join("missing.pem");
        let err = server_config(&missing, &key).expect_err("missing");
        assert!(
            err.to_string()
                .starts_with(&format!("cannot read certificate {}: ", missing.display())),
            "{err}"
        );
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").expect("write");
        let err = server_config(&garbage, &key).expect_err("garbage");
        assert_eq!(
            err.to_string(),
            format!(
                "{} is not a valid certificate file: it holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                garbage.display()
            )
        );
        // A certificate where the key should be.
        let err = server_config(&cert, &cert).expect_err("no key");
        assert!(
            err.to_string()
                .ends_with("it holds no PEM private key (PKCS#8, PKCS#1 or SEC1)"),
            "{err}"
        );
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let (a, b) = (
            tempfile::tempdir().expect("a"),
            tempfile::tempdir().expect("b"),
        );
        let (cert, _) = identity(a.path());
        let (_, other_key) = identity(b.path());
        let err = server_config(&cert, &other_key).expect_err("mismatch");
        assert!(matches!(err, Error::Identity { .. }), "{err:?}");
    }

    #[test]
    fn the_server_name_is_the_host_of_the_address() {
        let name = |a: &str| server_name(a).map(|n| n.to_str().into_owned());
        assert_eq!(
            name("example.com:7070").ok().as_deref(),
            Some("example.com")
        );
        assert_eq!(name("127.0.0.1:7070").ok().as_deref(), Some("127.0.0.1"));
        assert_eq!(name("[::1]:7070").ok().as_deref(), Some("::1"));
        assert_eq!(name("example.com").ok().as_deref(), Some("example.com"));
        assert!(matches!(name("bad host:1"), Err(Error::ServerName { .. })));
    }

    #[test]
    fn a_certificate_error_is_found_under_an_io_error() {
        let rejected = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let wrapped = std::io::Error::other(rejected);
        assert!(is_certificate_error(&wrapped));
        assert!(!is_certificate_error(&std::io::Error::other("refused")));
    }
}
