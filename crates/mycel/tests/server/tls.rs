//! RESP over TLS (`--resp-tls`), driven by `redis-cli --tls`: certificates made here with
//! rcgen, the server's checked by the client against its CA, the client's (with
//! `--resp-tls-client-ca`) by the server.

use std::path::{Path, PathBuf};
use std::process::Output;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use mycel::resp::encode_request;

use crate::util::{Server, redis_cli};

/// A CA and the PEM files it issued, in a temporary directory.
pub(crate) struct Pki {
    dir: tempfile::TempDir,
    params: CertificateParams,
    key: KeyPair,
}

impl Pki {
    /// A new CA, written as `ca.pem`.
    pub(crate) fn new(name: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed");
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).expect("write ca");
        Self { dir, params, key }
    }

    pub(crate) fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Issues a node's certificate (its ID the SAN DNS name, for both ends of a QUIC
    /// handshake), written as `<id>.pem` and `<id>-key.pem`.
    pub(crate) fn node(&self, id: &str) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::new(vec![id.to_owned()]).expect("params");
        params.distinguished_name.push(DnType::CommonName, id);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign(id, params)
    }

    /// Issues a certificate for `name` (a server's for localhost and 127.0.0.1, or a
    /// client's), written as `<file>.pem` and `<file>-key.pem`.
    fn issue(&self, file: &str, name: &str, server: bool) -> (PathBuf, PathBuf) {
        let names = if server {
            vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
        } else {
            Vec::new()
        };
        let mut params = CertificateParams::new(names).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        self.sign(file, params)
    }

    /// Signs `params` with this CA, as `<file>.pem` and `<file>-key.pem`.
    fn sign(&self, file: &str, mut params: CertificateParams) -> (PathBuf, PathBuf) {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &Issuer::from_params(&self.params, &self.key))
            .expect("signed");
        let (cert_path, key_path) = (
            self.path(&format!("{file}.pem")),
            self.path(&format!("{file}-key.pem")),
        );
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (cert_path, key_path)
    }
}

fn arg(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// The flags of a TLS listener on an ephemeral loopback port with `cert` and `key`.
fn listener<'a>(cert: &'a Path, key: &'a Path) -> [&'a str; 6] {
    [
        "--resp-tls",
        "127.0.0.1:0",
        "--resp-tls-cert",
        arg(cert),
        "--resp-tls-key",
        arg(key),
    ]
}

/// `redis-cli --tls` to the server's TLS port with `tls` options, then `args`.
fn tls_cli(s: &Server, tls: &[&str], args: &[&str]) -> Output {
    let port = s
        .resp_tls
        .expect("started with --resp-tls")
        .port()
        .to_string();
    redis_cli()
        .args(["--no-raw", "-h", "127.0.0.1", "-p", &port, "--tls"])
        .args(tls)
        .args(args)
        .output()
        .expect("run redis-cli")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
}

fn tls_failures(s: &Server) -> u64 {
    s.metric("mycel_tls_handshake_failures_total")
}

/// A client that trusts the server's CA talks RESP over TLS, the plain port serves the
/// same data, and a client that does not trust the CA, or speaks plain RESP to the TLS
/// port, gets nothing and is counted.
#[test]
fn resp_over_tls_with_the_servers_ca() {
    let pki = Pki::new("server");
    let (cert, key) = pki.issue("server", "mycel", true);
    let s = Server::start(&listener(&cert, &key));
    let ca = pki.path("ca.pem");
    let trusted = ["--cacert", arg(&ca)];
    let out = tls_cli(&s, &trusted, &["SET", "greeting", "over tls"]);
    assert_eq!(stdout(&out), "OK", "{out:?}");
    // The same node, the same data, whichever port.
    assert_eq!(s.cli(&["GET", "greeting"]), "\"over tls\"");
    let out = tls_cli(&s, &trusted, &["CLIENT", "INFO"]);
    assert!(stdout(&out).contains("laddr=127.0.0.1:"), "{out:?}");

    // A client that trusts another CA refuses the server (and the server counts the
    // aborted handshake).
    let other = Pki::new("other");
    let before = tls_failures(&s);
    let out = tls_cli(&s, &["--cacert", arg(&other.path("ca.pem"))], &["PING"]);
    assert_ne!(stdout(&out), "PONG", "{out:?}");
    crate::util::eventually("the refused handshake is counted", || {
        tls_failures(&s) > before
    });
    // Plain RESP to the TLS port is not served.
    let before = tls_failures(&s);
    let port = s.resp_tls.expect("tls").port().to_string();
    let out = redis_cli()
        .args(["-h", "127.0.0.1", "-p", &port, "PING"])
        .output()
        .expect("run redis-cli");
    assert_ne!(stdout(&out), "PONG", "{out:?}");
    crate::util::eventually("the plain client is counted", || tls_failures(&s) > before);
    // And the plain port still serves plain clients.
    assert_eq!(s.cli(&["PING"]), "PONG");
}

/// With `--resp-tls-client-ca`, only a client presenting a certificate that CA issued is
/// served; with `--requirepass` it must authenticate too.
#[test]
fn client_certificates_and_password() {
    let servers = Pki::new("server");
    let (cert, key) = servers.issue("server", "mycel", true);
    let clients = Pki::new("clients");
    let (client_cert, client_key) = clients.issue("client", "app-1", false);
    let rogue = Pki::new("rogue");
    let (rogue_cert, rogue_key) = rogue.issue("client", "intruder", false);
    let client_ca = clients.path("ca.pem");
    let more = [
        "--resp-tls-client-ca",
        arg(&client_ca),
        "--requirepass",
        "s3cret",
    ];
    let s = Server::standalone(&[&listener(&cert, &key)[..], &more].concat());
    let ca = servers.path("ca.pem");
    let with = |cert: &Path, key: &Path, args: &[&str]| {
        let tls = ["--cacert", arg(&ca), "--cert", arg(cert), "--key", arg(key)];
        stdout(&tls_cli(&s, &tls, args))
    };
    assert_eq!(
        with(
            &client_cert,
            &client_key,
            &["-a", "s3cret", "--no-auth-warning", "SET", "k", "v"]
        ),
        "OK"
    );
    assert_eq!(
        with(&client_cert, &client_key, &["GET", "k"]),
        "(error) NOAUTH Authentication required."
    );
    assert_ne!(
        with(
            &rogue_cert,
            &rogue_key,
            &["-a", "s3cret", "--no-auth-warning", "GET", "k"]
        ),
        "\"v\""
    );
    // Without a certificate at all.
    let out = tls_cli(
        &s,
        &["--cacert", arg(&ca)],
        &["-a", "s3cret", "--no-auth-warning", "GET", "k"],
    );
    assert_ne!(stdout(&out), "\"v\"", "{out:?}");
}

/// The TLS settings are checked before anything is bound, each problem named by its flag.
#[test]
fn bad_tls_settings_name_their_flag() {
    let pki = Pki::new("server");
    let (cert, key) = pki.issue("server", "mycel", true);
    let (_, other_key) = pki.issue("other", "other", true);
    let problems = |args: &[&str]| {
        let out = crate::util::mycel()
            .args(["--dev", "--resp", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(args)
            .output()
            .expect("run mycel");
        assert!(!out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = problems(&["--resp-tls", "127.0.0.1:0"]);
    assert!(
        err.contains("--resp-tls-cert (resp_tls_cert): required with --resp-tls")
            && err.contains("--resp-tls-key (resp_tls_key): required with --resp-tls"),
        "{err}"
    );
    let err = problems(&["--resp-tls-cert", arg(&cert)]);
    assert!(
        err.contains("--resp-tls-cert (resp_tls_cert): only used with --resp-tls"),
        "{err}"
    );
    let missing = pki.path("missing.pem");
    let err = problems(&listener(&missing, &key));
    assert!(
        err.contains("--resp-tls-cert (resp_tls_cert): ") && err.contains("missing.pem"),
        "{err}"
    );
    // A key that is not the certificate's.
    let err = problems(&listener(&cert, &other_key));
    assert!(err.contains("--resp-tls-key (resp_tls_key): "), "{err}");
    // A certificate file given as the key.
    let err = problems(&listener(&cert, &cert));
    assert!(
        err.contains("--resp-tls-key (resp_tls_key): ") && err.contains("no private key"),
        "{err}"
    );
}

/// SIGHUP rereads the TLS files: new connections get the new certificate, and files that
/// do not load are reported and the old ones kept.
#[test]
fn sighup_reloads_the_certificate() {
    let first = Pki::new("first");
    let (cert, key) = first.issue("server", "mycel", true);
    let s = Server::start(&listener(&cert, &key));
    let ping = |ca: &Path| stdout(&tls_cli(&s, &["--cacert", arg(ca)], &["PING"]));
    let (first_ca, second) = (first.path("ca.pem"), Pki::new("second"));
    let second_ca = second.path("ca.pem");
    assert_eq!(ping(&first_ca), "PONG");
    assert_ne!(ping(&second_ca), "PONG");

    // The files replaced in place (as a certificate renewal does), then SIGHUP.
    let (new_cert, new_key) = second.issue("server", "mycel", true);
    std::fs::copy(&new_cert, &cert).expect("copy cert");
    std::fs::copy(&new_key, &key).expect("copy key");
    crate::util::signal(s.pid(), "HUP");
    crate::util::eventually("the new certificate served", || ping(&second_ca) == "PONG");
    assert_ne!(ping(&first_ca), "PONG");
    assert_eq!(s.metric("mycel_reloads_total"), 1);
    assert_eq!(s.metric("mycel_reload_failures_total"), 0);

    // A broken key: the reload fails, the server keeps its certificate (and runs).
    std::fs::write(&key, "not a key").expect("write");
    crate::util::signal(s.pid(), "HUP");
    crate::util::eventually("the failed reload counted", || {
        s.metric("mycel_reload_failures_total") == 1
    });
    assert_eq!(ping(&second_ca), "PONG");
}

/// Replies larger than the socket takes at once arrive whole over TLS, also to a client
/// that reads late: what the TLS layer still holds after the last write is flushed
/// before the connection waits for the next request.
#[test]
fn large_replies_arrive_whole_over_tls() {
    use std::io::{Read, Write};

    use rustls::pki_types::pem::PemObject;

    let pki = Pki::new("server");
    let (cert, key) = pki.issue("server", "mycel", true);
    let s = Server::start(&listener(&cert, &key));
    let value = vec![b'v'; 8 * 1024 * 1024];
    let mut c = s.connect();
    let set = encode_request(&[b"SET", b"big", &value]);
    crate::util::roundtrip(&mut c, &set, b"+OK\r\n");

    let mut roots = rustls::RootCertStore::empty();
    let ca = rustls::pki_types::CertificateDer::from_pem_file(pki.path("ca.pem")).expect("ca");
    roots.add(ca).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("client");
    let sock = std::net::TcpStream::connect(s.resp_tls.expect("tls")).expect("connect");
    sock.set_read_timeout(Some(crate::util::GUARD))
        .expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let mut expected = format!("${}\r\n", value.len()).into_bytes();
    expected.extend_from_slice(&value);
    expected.extend_from_slice(b"\r\n");
    for _ in 0..2 {
        tls.write_all(&encode_request(&[b"GET", b"big"]))
            .expect("send");
        tls.flush().expect("flush");
        // Read slowly, so that the server's socket is full until its last write.
        let mut got = Vec::with_capacity(expected.len());
        let mut chunk = vec![0; 64 * 1024];
        while got.len() < expected.len() {
            std::thread::sleep(std::time::Duration::from_millis(1));
            let want = chunk.len().min(expected.len() - got.len());
            let n = tls.read(&mut chunk[..want]).expect("the whole reply");
            assert!(
                n > 0,
                "closed after {} of {} bytes",
                got.len(),
                expected.len()
            );
            got.extend_from_slice(&chunk[..n]);
        }
        assert!(got == expected, "the reply is the value");
    }
}
