//! Mutual TLS for QUIC: rustls configurations, certificate loading, node identity.
//!
//! Both sides present a certificate and both verify the other's against the configured CA
//! roots; TLS 1.3 only (QUIC requires it), ring as the crypto provider.
//!
//! **Peer identity.** A node's ID is read from its end-entity certificate: the first SAN
//! DNS name wins; only a certificate with no SAN DNS name at all falls back to the
//! subject's common name (CN). A certificate whose chosen name is not a valid [`NodeId`]
//! carries no identity and is refused. The same rule is used on both sides: a client dials
//! with the server name set to the expected node ID and refuses a server certificate whose
//! identity differs; a server reads the client's identity from its certificate and hands it
//! to the caller's acceptance policy.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nodosum_proto::{IdError, NodeId};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    SignatureScheme,
};

/// The default ALPN protocol of Nodosum's QUIC transport.
pub const DEFAULT_ALPN: &[u8] = b"mycorrizal-quic";

/// Loading certificates or building a TLS configuration failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {path}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file could not be parsed.
    #[error("invalid PEM in {path}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A certificate file holds no certificate.
    #[error("no certificate in {path}")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A CA certificate was not accepted as a trust anchor.
    #[error("invalid CA certificate in {path}")]
    InvalidCa {
        /// The file (or `<memory>`).
        path: PathBuf,
        /// Why webpki refused it.
        #[source]
        source: rustls::Error,
    },
    /// The own certificate carries no usable node ID.
    #[error("own certificate carries no node identity")]
    NoIdentity(#[source] IdentityError),
    /// rustls refused the configuration (e.g. key and certificate do not match).
    #[error("invalid TLS configuration")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built (e.g. no CA roots).
    #[error("cannot build the client certificate verifier")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// Generating a development certificate failed.
    #[error("certificate generation failed")]
    Generate(#[from] rcgen::Error),
}

/// Why no node ID could be read from a certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The certificate's DER could not be walked to its subject or extensions.
    #[error("malformed certificate")]
    Malformed,
    /// Neither a SAN DNS name nor a common name is present.
    #[error("certificate has no SAN DNS name and no common name")]
    Missing,
    /// The chosen name is not a valid node ID.
    #[error("certificate name {name:?} is not a valid node id")]
    InvalidNodeId {
        /// The name found (lossy UTF-8).
        name: String,
        /// Why it is invalid.
        #[source]
        source: IdError,
    },
    /// The certificate's node ID differs from the one that was dialled.
    #[error("certificate identity mismatch: dialled {expected:?}, certificate says {found:?}")]
    Mismatch {
        /// The node ID the connection was dialled for.
        expected: String,
        /// The node ID in the certificate.
        found: NodeId,
    },
}

/// A node's TLS identity: trusted CA roots, its certificate chain and private key.
#[derive(Debug)]
pub struct TlsIdentity {
    /// CA certificates that peers' certificates must chain to.
    pub ca_roots: Vec<CertificateDer<'static>>,
    /// This node's certificate chain, end entity first.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The private key of the end-entity certificate.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        Self {
            ca_roots: self.ca_roots.clone(),
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl TlsIdentity {
    /// Loads the CA roots, certificate chain and private key from PEM files.
    pub fn from_pem_files(
        ca: impl AsRef<Path>,
        cert_chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, TlsError> {
        Self::from_pem_files_checking_all(ca, cert_chain, key)
            .map_err(|mut errors| errors.remove(0).1)
    }

    /// Like [`from_pem_files`](Self::from_pem_files), but reads all three files whatever
    /// fails, so that a configuration check reports every bad file at once: the errors
    /// (at least one), each with the file it is about, in the order CA, certificate
    /// chain, key (the three may be one path).
    pub fn from_pem_files_checking_all(
        ca: impl AsRef<Path>,
        cert_chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, Vec<(PemFile, TlsError)>> {
        let ca_roots = load_certs(ca.as_ref());
        let cert_chain = load_certs(cert_chain.as_ref());
        let key_path = key.as_ref();
        let key = read(key_path).and_then(|pem| {
            PrivateKeyDer::from_pem_slice(&pem).map_err(|source| TlsError::Pem {
                path: key_path.to_owned(),
                source,
            })
        });
        match (ca_roots, cert_chain, key) {
            (Ok(ca_roots), Ok(cert_chain), Ok(key)) => Ok(Self {
                ca_roots,
                cert_chain,
                key,
            }),
            (ca_roots, cert_chain, key) => Err([
                ca_roots.err().map(|e| (PemFile::Ca, e)),
                cert_chain.err().map(|e| (PemFile::CertChain, e)),
                key.err().map(|e| (PemFile::Key, e)),
            ]
            .into_iter()
            .flatten()
            .collect()),
        }
    }

    /// Checks that a node could use this identity, as starting its endpoint would: the CA
    /// roots are trust anchors and the key belongs to the certificate.
    pub fn check(&self) -> Result<(), TlsError> {
        TlsConfigs::new(self, DEFAULT_ALPN, &Arc::default()).map(drop)
    }

    /// The node ID in this identity's end-entity certificate.
    pub fn node_id(&self) -> Result<NodeId, TlsError> {
        let cert = self
            .cert_chain
            .first()
            .ok_or(TlsError::NoIdentity(IdentityError::Missing))?;
        node_id_from_cert(cert).map_err(TlsError::NoIdentity)
    }
}

/// One of the three PEM files of a [`TlsIdentity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemFile {
    /// The CA certificates.
    Ca,
    /// The node's certificate chain.
    CertChain,
    /// The node's private key.
    Key,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::ReadFile {
        path: path.to_owned(),
        source,
    })
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// A development certificate authority generated in memory with rcgen.
///
/// For tests and single-machine setups only: the CA key lives in process memory.
/// Production deployments load PEM files with [`TlsIdentity::from_pem_files`].
#[derive(Debug)]
pub struct DevCa {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
}

/// Validity of a development certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DevValidity {
    /// Valid from 1975 to 4096 (rcgen's default).
    #[default]
    Long,
    /// Expired: valid only during the year 2000. For refusal tests.
    Expired,
}

impl DevCa {
    /// Generates a new CA whose common name is `name`.
    pub fn generate(name: &str) -> Result<Self, TlsError> {
        let params = Self::params(name)?;
        let key = rcgen::KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            params,
            key,
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
        })
    }

    /// Loads a CA made by [`generate`](Self::generate) with the same `name` from its
    /// certificate and key PEM (as [`cert_pem`](Self::cert_pem) and
    /// [`key_pem`](Self::key_pem) wrote them), to keep one development CA across runs.
    pub fn from_pem(name: &str, cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let params = Self::params(name)?;
        let key = rcgen::KeyPair::from_pem(key_pem)?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| {
            TlsError::Rustls(rustls::Error::General(format!(
                "development CA certificate: {e}"
            )))
        })?;
        Ok(Self {
            params,
            key,
            cert_der,
            cert_pem: cert_pem.to_owned(),
        })
    }

    /// The CA's parameters. Deterministic, so that a reloaded CA issues certificates
    /// whose issuer matches the stored CA certificate.
    fn params(name: &str) -> Result<rcgen::CertificateParams, TlsError> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        Ok(params)
    }

    /// The CA certificate (DER).
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The CA's private key (PKCS#8 PEM). Keep it private: it signs node certificates.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Issues a long-lived node certificate for `node_id` (in CN and SAN DNS) and returns
    /// the identity trusting this CA.
    pub fn issue(&self, node_id: &NodeId) -> Result<TlsIdentity, TlsError> {
        self.issue_with(node_id, DevValidity::Long)
    }

    /// Issues a node certificate with the given validity.
    pub fn issue_with(
        &self,
        node_id: &NodeId,
        validity: DevValidity,
    ) -> Result<TlsIdentity, TlsError> {
        let (cert, key) = self.sign(node_id, validity)?;
        Ok(TlsIdentity {
            ca_roots: vec![self.cert_der()],
            cert_chain: vec![cert.der().clone()],
            key: PrivateKeyDer::try_from(key.serialize_der()).map_err(|_| {
                TlsError::Rustls(rustls::Error::General("rcgen key is not PKCS#8".into()))
            })?,
        })
    }

    /// Issues a long-lived node certificate for `node_id`, as [`issue`](Self::issue), and
    /// returns it and its private key as PEM (the key PKCS#8): files for
    /// [`TlsIdentity::from_pem_files`], with [`cert_pem`](Self::cert_pem) as the CA.
    pub fn issue_pem(&self, node_id: &NodeId) -> Result<(String, String), TlsError> {
        let (cert, key) = self.sign(node_id, DevValidity::Long)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A new node key and its certificate for `node_id`, signed by this CA.
    fn sign(
        &self,
        node_id: &NodeId,
        validity: DevValidity,
    ) -> Result<(rcgen::Certificate, rcgen::KeyPair), TlsError> {
        let mut params = rcgen::CertificateParams::new(vec![node_id.as_str().to_owned()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, node_id.as_str());
        // Every node is both a QUIC server and a QUIC client.
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        if validity == DevValidity::Expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2000, 12, 31);
        }
        let key = rcgen::KeyPair::generate()?;
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert, key))
    }
}

/// The rustls configurations of one node.
#[derive(Debug, Clone)]
pub(crate) struct TlsConfigs {
    pub(crate) server: Arc<rustls::ServerConfig>,
    pub(crate) client: Arc<rustls::ClientConfig>,
}

/// Counts certificate verifications per node ID. A handshake that verified a certificate
/// was a full one; a resumed handshake presents no certificate, so no verifier runs.
#[derive(Debug, Default)]
pub(crate) struct HandshakeTracker {
    client: Mutex<HashMap<String, u32>>,
    server: Mutex<HashMap<String, u32>>,
}

impl HandshakeTracker {
    fn record(map: &Mutex<HashMap<String, u32>>, name: &str) {
        let mut map = map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *map.entry(name.to_owned()).or_default() += 1;
    }

    fn take(map: &Mutex<HashMap<String, u32>>, name: &str) -> bool {
        let mut map = map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match map.get_mut(name) {
            Some(n) if *n > 1 => {
                *n -= 1;
                true
            }
            Some(_) => {
                map.remove(name);
                true
            }
            None => false,
        }
    }

    /// Forgets client-side verifications of `name` (before dialling it).
    pub(crate) fn reset_client(&self, name: &str) {
        self.client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name);
    }

    /// Whether the last outgoing handshake to `name` verified a certificate (full).
    pub(crate) fn take_client(&self, name: &str) -> bool {
        Self::take(&self.client, name)
    }

    /// Whether an incoming handshake from `name` verified a certificate (full).
    pub(crate) fn take_server(&self, name: &str) -> bool {
        Self::take(&self.server, name)
    }
}

/// The crypto provider of Nodosum's TLS: ring, with `TLS13_AES_128_GCM_SHA256` the
/// preferred cipher suite (rustls's own order puts `TLS13_AES_256_GCM_SHA384` first).
///
/// The suite's hash runs the whole TLS 1.3 key schedule and QUIC's key derivation. CPUs
/// with the x86 SHA extensions or ARMv8's SHA-256 instructions compute SHA-256 in hardware,
/// while ring computes SHA-384 in software on x86-64: on this project's benchmark machine
/// (an AMD EPYC) the SHA-384 suite spent about 8 % of a 0-RTT reconnect in
/// `sha512_block_data_order_nohw`, and the SHA-256 suite set up connections about 50 µs
/// sooner. AES-128 also encrypts packets with 10 rounds instead of 14. It is the
/// suite every TLS 1.3 implementation must offer (RFC 8446, section 9.1), and the one QUIC's
/// Initial packets already use. The other two suites stay offered, after it.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

impl TlsConfigs {
    /// Builds the server and client configurations of a node. Verifications are recorded
    /// in `tracker` (a node keeps one across identity reloads).
    pub(crate) fn new(
        identity: &TlsIdentity,
        alpn: &[u8],
        tracker: &Arc<HandshakeTracker>,
    ) -> Result<Self, TlsError> {
        let provider = crypto_provider();
        let mut roots = RootCertStore::empty();
        for ca in &identity.ca_roots {
            roots
                .add(ca.clone())
                .map_err(|source| TlsError::InvalidCa {
                    path: PathBuf::from("<ca roots>"),
                    source,
                })?;
        }
        let roots = Arc::new(roots);
        identity.node_id()?;

        let inner =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
        let client_verifier = Arc::new(NodeClientVerifier {
            inner,
            tracker: tracker.clone(),
        });
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(identity.cert_chain.clone(), identity.key.clone_key())?;
        server.alpn_protocols = vec![alpn.to_vec()];
        // QUIC signals 0-RTT support with this exact value (RFC 9001 section 4.6.1).
        server.max_early_data_size = u32::MAX;

        let server_verifier = Arc::new(NodeServerVerifier {
            roots,
            algorithms: provider.signature_verification_algorithms,
            tracker: tracker.clone(),
        });
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(server_verifier)
            .with_client_auth_cert(identity.cert_chain.clone(), identity.key.clone_key())?;
        client.alpn_protocols = vec![alpn.to_vec()];
        client.enable_early_data = true;
        Ok(Self {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

/// Verifies a server certificate against the CA roots and the dialled node ID.
#[derive(Debug)]
struct NodeServerVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
    tracker: Arc<HandshakeTracker>,
}

fn identity_error(e: IdentityError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

impl ServerCertVerifier for NodeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let expected = match server_name {
            ServerName::DnsName(name) => name.as_ref().to_owned(),
            _ => {
                return Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName,
                ));
            }
        };
        let found = node_id_from_cert(end_entity).map_err(identity_error)?;
        if found.as_str() != expected {
            return Err(identity_error(IdentityError::Mismatch { expected, found }));
        }
        HandshakeTracker::record(&self.tracker.client, &expected);
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// webpki's client verifier (certificate required, chained to the CA roots), plus the
/// requirement that the certificate carries a node ID.
#[derive(Debug)]
struct NodeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    tracker: Arc<HandshakeTracker>,
}

impl ClientCertVerifier for NodeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let id = node_id_from_cert(end_entity).map_err(identity_error)?;
        HandshakeTracker::record(&self.tracker.server, id.as_str());
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Reads the node ID from a DER certificate: the first SAN DNS name, or the subject CN if
/// the certificate has no SAN DNS name. The certificate's signature is not checked here.
pub fn node_id_from_cert(cert: &CertificateDer<'_>) -> Result<NodeId, IdentityError> {
    let (san, cn) = der::names(cert.as_ref()).ok_or(IdentityError::Malformed)?;
    let name = san.or(cn).ok_or(IdentityError::Missing)?;
    let text = std::str::from_utf8(name).map_err(|_| IdentityError::InvalidNodeId {
        name: String::from_utf8_lossy(name).into_owned(),
        source: IdError::Empty,
    })?;
    NodeId::new(text).map_err(|source| IdentityError::InvalidNodeId {
        name: text.to_owned(),
        source,
    })
}

/// Just enough DER to find the subject CN and the SAN DNS names of an X.509 certificate.
/// Every read is bounds-checked; anything unexpected yields `None`.
mod der {
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID: u8 = 0x06;
    const OCTET_STRING: u8 = 0x04;
    const EXPLICIT_0: u8 = 0xa0;
    const EXPLICIT_3: u8 = 0xa3;
    const DNS_NAME: u8 = 0x82;
    const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
    const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];

    /// One TLV: `(tag, content, rest)`.
    fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, input) = input.split_first()?;
        if tag & 0x1f == 0x1f {
            return None;
        }
        let (&first, mut input) = input.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return None;
            }
            let (bytes, rest) = input.split_at_checked(n)?;
            input = rest;
            bytes
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
        };
        let (content, rest) = input.split_at_checked(len)?;
        Some((tag, content, rest))
    }

    fn expect(input: &[u8], want: u8) -> Option<(&[u8], &[u8])> {
        let (tag, content, rest) = tlv(input)?;
        (tag == want).then_some((content, rest))
    }

    /// `(first SAN DNS name, subject CN)`; `None` if the DER is malformed.
    pub(super) type Names<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

    pub(super) fn names(cert: &[u8]) -> Option<Names<'_>> {
        let (cert, _) = expect(cert, SEQUENCE)?;
        let (tbs, _) = expect(cert, SEQUENCE)?;
        let mut rest = tbs;
        let (tag, _, after) = tlv(rest)?;
        if tag == EXPLICIT_0 {
            rest = after;
        }
        // serial, signature algorithm, issuer, validity
        for _ in 0..4 {
            rest = tlv(rest)?.2;
        }
        let (subject, after) = expect(rest, SEQUENCE)?;
        rest = tlv(after)?.2; // subject public key info
        let cn = common_name(subject)?;
        let mut san = None;
        while !rest.is_empty() {
            let (tag, content, after) = tlv(rest)?;
            rest = after;
            if tag == EXPLICIT_3 {
                san = first_dns_name(content)?;
            }
        }
        Some((san, cn))
    }

    fn common_name(mut name: &[u8]) -> Option<Option<&[u8]>> {
        while !name.is_empty() {
            let (mut set, after) = expect(name, SET)?;
            name = after;
            while !set.is_empty() {
                let (attr, after) = expect(set, SEQUENCE)?;
                set = after;
                let (oid, value) = expect(attr, OID)?;
                if oid == OID_CN {
                    return Some(Some(tlv(value)?.1));
                }
            }
        }
        Some(None)
    }

    fn first_dns_name(extensions: &[u8]) -> Option<Option<&[u8]>> {
        let (mut list, _) = expect(extensions, SEQUENCE)?;
        while !list.is_empty() {
            let (ext, after) = expect(list, SEQUENCE)?;
            list = after;
            let (oid, mut ext_rest) = expect(ext, OID)?;
            if oid != OID_SAN {
                continue;
            }
            let (tag, content, after) = tlv(ext_rest)?;
            // Optional `critical` BOOLEAN before the value.
            let value = if tag == OCTET_STRING {
                content
            } else {
                ext_rest = after;
                expect(ext_rest, OCTET_STRING)?.0
            };
            let (mut names, _) = expect(value, SEQUENCE)?;
            while !names.is_empty() {
                let (tag, content, after) = tlv(names)?;
                names = after;
                if tag == DNS_NAME {
                    return Some(Some(content));
                }
            }
            return Some(None);
        }
        Some(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    #[test]
    fn the_sha256_suite_is_preferred_and_the_others_stay_offered() {
        use rustls::CipherSuite::*;
        let suites: Vec<_> = crypto_provider()
            .cipher_suites
            .iter()
            .filter(|s| s.tls13().is_some())
            .map(rustls::SupportedCipherSuite::suite)
            .collect();
        assert_eq!(
            suites,
            [
                TLS13_AES_128_GCM_SHA256,
                TLS13_AES_256_GCM_SHA384,
                TLS13_CHACHA20_POLY1305_SHA256,
            ]
        );
    }

    #[test]
    fn identity_from_san_dns_name() {
        let ca = DevCa::generate("test ca").unwrap();
        let ident = ca.issue(&id("node-1.example")).unwrap();
        assert_eq!(ident.node_id().unwrap(), id("node-1.example"));
    }

    #[test]
    fn san_wins_over_cn_and_cn_is_fallback() {
        let ca = DevCa::generate("test ca").unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let issuer = rcgen::Issuer::from_params(&ca.params, &ca.key);

        let mut both = rcgen::CertificateParams::new(vec!["from-san".to_owned()]).unwrap();
        both.distinguished_name
            .push(rcgen::DnType::CommonName, "from-cn");
        let cert = both.signed_by(&key, &issuer).unwrap();
        assert_eq!(node_id_from_cert(cert.der()).unwrap(), id("from-san"));

        let mut cn_only = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        cn_only
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "org");
        cn_only
            .distinguished_name
            .push(rcgen::DnType::CommonName, "from-cn");
        let cert = cn_only.signed_by(&key, &issuer).unwrap();
        assert_eq!(node_id_from_cert(cert.der()).unwrap(), id("from-cn"));

        let none = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut none = none;
        none.distinguished_name = rcgen::DistinguishedName::new();
        let cert = none.signed_by(&key, &issuer).unwrap();
        assert_eq!(node_id_from_cert(cert.der()), Err(IdentityError::Missing));

        let bad = rcgen::CertificateParams::new(vec!["-bad".to_owned()]).unwrap();
        let cert = bad.signed_by(&key, &issuer).unwrap();
        assert!(matches!(
            node_id_from_cert(cert.der()),
            Err(IdentityError::InvalidNodeId { .. })
        ));
    }

    #[test]
    fn garbage_certificates_are_refused_without_panic() {
        let ca = DevCa::generate("test ca").unwrap();
        let good = ca.issue(&id("n1")).unwrap().cert_chain[0].to_vec();
        for cut in 0..good.len() {
            let _ = node_id_from_cert(&CertificateDer::from(good[..cut].to_vec()));
        }
        for garbage in [
            &[][..],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            &[0x1f, 0x01],
        ] {
            assert_eq!(
                node_id_from_cert(&CertificateDer::from(garbage.to_vec())),
                Err(IdentityError::Malformed)
            );
        }
    }

    #[test]
    fn pem_files_load_with_errors_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("nodosum-quic-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = DevCa::generate("file ca").unwrap();
        let (cert_pem, key_pem) = ca.issue_pem(&id("file-node")).unwrap();
        let ca_path = dir.join("ca.pem");
        let cert_path = dir.join("node.pem");
        let key_path = dir.join("node.key");
        std::fs::write(&ca_path, ca.cert_pem()).unwrap();
        std::fs::write(&cert_path, cert_pem).unwrap();
        std::fs::write(&key_path, key_pem).unwrap();
        let loaded = TlsIdentity::from_pem_files(&ca_path, &cert_path, &key_path).unwrap();
        assert_eq!(loaded.node_id().unwrap(), id("file-node"));
        assert!(TlsConfigs::new(&loaded, DEFAULT_ALPN, &Arc::default()).is_ok());

        let missing = dir.join("missing.pem");
        let err = TlsIdentity::from_pem_files(&missing, &cert_path, &key_path).unwrap_err();
        assert!(matches!(&err, TlsError::ReadFile { path, .. } if path == &missing));
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = TlsIdentity::from_pem_files(&ca_path, &empty, &key_path).unwrap_err();
        assert!(matches!(&err, TlsError::NoCertificate { path } if path == &empty));
        let err = TlsIdentity::from_pem_files(&ca_path, &cert_path, &empty).unwrap_err();
        assert!(matches!(&err, TlsError::Pem { path, .. } if path == &empty));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
