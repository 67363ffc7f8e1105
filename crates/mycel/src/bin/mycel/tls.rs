//! TLS for client connections (`--resp-tls`), as Redis's `tls-port`: a second RESP
//! listener whose connections speak TLS 1.2 or 1.3 (rustls) with the server certificate
//! of `--resp-tls-cert`, and, with `--resp-tls-client-ca`, only to clients presenting a
//! certificate that CA signed (`redis-cli --tls --cacert ca.pem --cert c.pem --key c.key`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

/// How long a client has to complete its TLS handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The flags naming each file, for problem reports.
pub(crate) const CERT_FLAG: &str = "--resp-tls-cert (resp_tls_cert)";
pub(crate) const KEY_FLAG: &str = "--resp-tls-key (resp_tls_key)";
pub(crate) const CLIENT_CA_FLAG: &str = "--resp-tls-client-ca (resp_tls_client_ca)";

/// The TLS listener's files, read at start and again on SIGHUP.
#[derive(Debug, Clone)]
pub(crate) struct TlsFiles {
    /// `--resp-tls-cert`.
    pub(crate) cert: PathBuf,
    /// `--resp-tls-key`.
    pub(crate) key: PathBuf,
    /// `--resp-tls-client-ca`.
    pub(crate) client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// The handshake configuration the files make (see [`server_config`]).
    pub(crate) fn load(&self) -> Result<TlsAcceptor, (&'static str, String)> {
        server_config(&self.cert, &self.key, self.client_ca.as_deref()).map(TlsAcceptor::from)
    }
}

/// The handshake configuration of new TLS connections; a reload replaces it (open
/// connections keep theirs).
pub(crate) type SharedAcceptor = Arc<RwLock<TlsAcceptor>>;

/// The TLS listener's address, files and handshake configuration.
pub(crate) struct RespTls {
    /// Where to listen.
    pub(crate) addr: SocketAddr,
    /// Where its configuration comes from.
    pub(crate) files: TlsFiles,
    /// Accepts its connections' handshakes.
    pub(crate) acceptor: TlsAcceptor,
}

impl std::fmt::Debug for RespTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RespTls")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// The server side of client TLS from PEM files: the certificate chain (leaf first), its
/// private key, and the CA that client certificates must chain to (`None`: clients
/// present none). An error names the flag of the file at fault.
fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, (&'static str, String)> {
    let chain = certificates(CERT_FLAG, cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        (
            KEY_FLAG,
            format!("{}: no private key read: {e}", key.display()),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| (CERT_FLAG, e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certificates(CLIENT_CA_FLAG, path)? {
                roots
                    .add(c)
                    .map_err(|e| (CLIENT_CA_FLAG, format!("{}: {e}", path.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| (CLIENT_CA_FLAG, format!("{}: {e}", path.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(chain, key_der).map_err(|e| {
        (
            KEY_FLAG,
            format!("{} with {}: {e}", key.display(), cert.display()),
        )
    })?;
    Ok(Arc::new(config))
}

/// Every certificate of a PEM file; at least one.
fn certificates(
    flag: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, (&'static str, String)> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| (flag, format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err((
            flag,
            format!("{}: no certificate in the file", path.display()),
        ));
    }
    Ok(certs)
}
