//! An in-memory CA and two node certificates, and the rustls configurations both baselines use.

use std::sync::Arc;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// ALPN of Nodosum's QUIC transport; the TCP baseline uses it too.
pub const ALPN: &[u8] = b"mycorrizal-quic";

/// Node ID (and certificate name) of the serving side.
pub const SERVER_NAME: &str = "node-1";

/// Node ID (and certificate name) of the dialling side.
pub const CLIENT_NAME: &str = "node-2";

/// One node's certificate chain and key.
#[derive(Debug)]
pub struct Identity {
    /// End-entity certificate first.
    pub chain: Vec<CertificateDer<'static>>,
    /// PKCS#8 private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// A CA and the certificates of [`SERVER_NAME`] and [`CLIENT_NAME`], generated with rcgen.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA certificate both sides trust.
    pub ca: CertificateDer<'static>,
    /// Identity of [`SERVER_NAME`].
    pub server: Identity,
    /// Identity of [`CLIENT_NAME`].
    pub client: Identity,
}

/// How a client resumes sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// No session cache: every handshake is a full one.
    Never,
    /// Session tickets are kept and used (1-RTT resumption).
    Tickets,
    /// Session tickets and early data (0-RTT; QUIC only here).
    EarlyData,
}

impl Pki {
    /// Generates a CA and two node certificates (ECDSA P-256, node ID in CN and SAN DNS
    /// name, server + client auth), like `cargo xtask certs` does on disk.
    pub fn generate() -> anyhow::Result<Self> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "bench CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let node = |name: &str| -> anyhow::Result<Identity> {
            let mut params = CertificateParams::new(vec![name.to_owned()])?;
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &issuer)?;
            Ok(Identity {
                chain: vec![cert.der().clone()],
                key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            })
        };
        Ok(Self {
            ca: ca_cert.der().clone(),
            server: node(SERVER_NAME)?,
            client: node(CLIENT_NAME)?,
        })
    }

    fn roots(&self) -> anyhow::Result<Arc<RootCertStore>> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone())?;
        Ok(Arc::new(roots))
    }

    /// TLS 1.3 server configuration: client certificates required and verified against
    /// the CA, ALPN [`ALPN`]. With `early_data` it accepts 0-RTT (QUIC needs the maximum
    /// early data size to be `u32::MAX`).
    pub fn server_config(&self, early_data: bool) -> anyhow::Result<ServerConfig> {
        let provider = provider();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots()?, provider.clone()).build()?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.server.chain.clone(), self.server.key.clone_key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        if early_data {
            config.max_early_data_size = u32::MAX;
        }
        Ok(config)
    }

    /// TLS 1.3 client configuration presenting the client certificate, trusting the CA,
    /// ALPN [`ALPN`], resuming as `resume` says.
    pub fn client_config(&self, resume: Resume) -> anyhow::Result<ClientConfig> {
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.client.chain.clone(), self.client.key.clone_key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        match resume {
            Resume::Never => config.resumption = Resumption::disabled(),
            Resume::Tickets => {}
            Resume::EarlyData => config.enable_early_data = true,
        }
        Ok(config)
    }
}

/// The server's name as the client checks it.
pub fn server_name() -> anyhow::Result<ServerName<'static>> {
    ServerName::try_from(SERVER_NAME).context("server name")
}

/// The one crypto provider of the workspace, Nodosum's (its cipher suite order included), so
/// that the baselines' TLS differs from Nodosum's in nothing.
pub fn provider() -> Arc<CryptoProvider> {
    nodosum_quic::crypto_provider()
}

fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(2 * bytes.len()), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn from_hex(text: &str) -> anyhow::Result<Vec<u8>> {
    anyhow::ensure!(text.len().is_multiple_of(2), "odd hex length");
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .context("bad hex digit")
        })
        .collect()
}

impl Pki {
    /// The CA and both identities as one line of text (hex DER, space separated), to hand
    /// to a child process through its environment.
    pub fn to_text(&self) -> String {
        let id = |i: &Identity| {
            format!(
                "{} {}",
                to_hex(i.chain.first().map_or(&[][..], |c| c.as_ref())),
                to_hex(i.key.secret_der())
            )
        };
        format!(
            "{} {} {}",
            to_hex(self.ca.as_ref()),
            id(&self.server),
            id(&self.client)
        )
    }

    /// Reads what [`to_text`](Self::to_text) wrote.
    pub fn from_text(text: &str) -> anyhow::Result<Self> {
        let parts = text
            .split_whitespace()
            .map(from_hex)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let [ca, sc, sk, cc, ck] = <[Vec<u8>; 5]>::try_from(parts)
            .map_err(|p| anyhow::anyhow!("expected 5 parts, got {}", p.len()))?;
        let id = |cert: Vec<u8>, key: Vec<u8>| Identity {
            chain: vec![CertificateDer::from(cert)],
            key: PrivatePkcs8KeyDer::from(key).into(),
        };
        Ok(Self {
            ca: CertificateDer::from(ca),
            server: id(sc, sk),
            client: id(cc, ck),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips() {
        let pki = Pki::generate().unwrap();
        let back = Pki::from_text(&pki.to_text()).unwrap();
        assert_eq!(back.ca, pki.ca);
        assert_eq!(back.server.chain, pki.server.chain);
        assert_eq!(back.client.key.secret_der(), pki.client.key.secret_der());
        assert!(Pki::from_text("abc").is_err());
        assert!(Pki::from_text("00 11").is_err());
    }
}
