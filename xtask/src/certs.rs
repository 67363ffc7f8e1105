//! `cargo xtask certs`: a certificate authority and one mTLS certificate per node, as PEM files.
//!
//! Every node certificate names its node ID twice, as the subject CN and as a SAN DNS name
//! (Nodosum reads the SAN first, the CN as a fallback), and carries both the server and the
//! client authentication EKU because each node uses the same certificate on both sides of
//! mutual TLS. Keys are ECDSA P-256. Private keys are created with mode 0600 (never widened
//! and narrowed afterwards); certificates with the umask's default.
//!
//! Generation ([`generate`]) is pure and in memory; [`write_files`] checks every target
//! before it writes any, so a refused run leaves the directory as it was.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::num::NonZeroU32;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use nodosum_proto::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

const EXAMPLES: &str = "Examples:\n  \
cargo xtask certs --out certs --count 3\n  \
cargo xtask certs --out certs --nodes cache-a,cache-b --days 90\n  \
cargo xtask certs --out more --nodes node-4 --ca-cert certs/ca.pem --ca-key certs/ca-key.pem";

/// Options of `cargo xtask certs`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = EXAMPLES,
    after_long_help = concat!(
        "Files written to --out:\n",
        "  ca.pem            the CA certificate (every node trusts it)\n",
        "  ca-key.pem        the CA private key (only when the CA is generated here; keep it offline)\n",
        "  <node>.pem        the node's certificate: CN and SAN DNS name = the node ID,\n",
        "                    extended key usages TLS server + client authentication\n",
        "  <node>-key.pem    the node's private key (ECDSA P-256, PKCS#8), mode 0600\n",
        "\n",
        "Nothing is overwritten unless --force is given, and every target is checked before any\n",
        "file is written. With --ca-cert/--ca-key the CA certificate is copied to ca.pem (unless it\n",
        "already is that file) and its key is not copied. Node certificates start one hour in the\n",
        "past (clock skew) and must not outlive the CA.\n",
        "\n",
        "Examples:\n",
        "  cargo xtask certs --out certs --count 3\n",
        "  cargo xtask certs --out certs --nodes cache-a,cache-b --days 90\n",
        "  cargo xtask certs --out more --nodes node-4 --ca-cert certs/ca.pem --ca-key certs/ca-key.pem"
    )
)]
pub(crate) struct Args {
    /// Directory for the PEM files (created if missing).
    #[arg(long, value_name = "DIR")]
    pub(crate) out: PathBuf,
    /// Comma-separated node IDs: ASCII letters, digits, '-', '_', '.', starting with a
    /// letter or digit, at most 253 bytes.
    #[arg(
        long,
        value_name = "ID,...",
        value_delimiter = ',',
        required_unless_present = "count",
        conflicts_with = "count"
    )]
    pub(crate) nodes: Vec<String>,
    /// Generate certificates for node-1 .. node-N.
    #[arg(long, value_name = "N")]
    pub(crate) count: Option<NonZeroU32>,
    /// Sign with this existing CA certificate (PEM) instead of creating a CA; needs --ca-key.
    #[arg(long, value_name = "FILE", requires = "ca_key")]
    pub(crate) ca_cert: Option<PathBuf>,
    /// The private key (PEM) of --ca-cert.
    #[arg(long, value_name = "FILE", requires = "ca_cert")]
    pub(crate) ca_key: Option<PathBuf>,
    /// Validity of the node certificates, in days from now.
    #[arg(long, value_name = "DAYS", default_value_t = NonZeroU32::new(365).expect("invariant: 365 > 0"))]
    pub(crate) days: NonZeroU32,
    /// Validity of a generated CA, in days from now (ignored with --ca-cert).
    #[arg(long, value_name = "DAYS", default_value_t = NonZeroU32::new(3650).expect("invariant: 3650 > 0"))]
    pub(crate) ca_days: NonZeroU32,
    /// Common name of a generated CA.
    #[arg(long, value_name = "NAME", default_value = "Nodosum CA")]
    pub(crate) ca_name: String,
    /// Replace existing files instead of refusing.
    #[arg(long)]
    pub(crate) force: bool,
}

/// Where the signing CA comes from.
#[derive(Debug)]
pub(crate) enum CaSource {
    /// Create a new CA with this common name, valid for this many days.
    Generate {
        /// Subject common name.
        name: String,
        /// Validity in days from now.
        days: NonZeroU32,
    },
    /// Sign with an existing CA.
    Existing {
        /// The CA certificate, PEM.
        cert_pem: String,
        /// The CA private key, PEM.
        key_pem: String,
    },
}

/// One file to write: its name inside the output directory and its contents.
#[derive(Debug)]
pub(crate) struct OutputFile {
    /// File name, without directory.
    pub(crate) name: String,
    /// PEM text.
    pub(crate) contents: String,
    /// A private key: created with mode 0600.
    pub(crate) secret: bool,
}

/// Runs `cargo xtask certs`.
pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    let nodes = node_ids(args)?;
    let ca = match (&args.ca_cert, &args.ca_key) {
        (Some(cert), Some(key)) => CaSource::Existing {
            cert_pem: fs::read_to_string(cert)
                .with_context(|| format!("cannot read CA certificate {}", cert.display()))?,
            key_pem: fs::read_to_string(key)
                .with_context(|| format!("cannot read CA key {}", key.display()))?,
        },
        _ => CaSource::Generate {
            name: args.ca_name.clone(),
            days: args.ca_days,
        },
    };
    let mut files = generate(&ca, &nodes, args.days, SystemTime::now())?;
    // Signing with an existing CA whose certificate already is `<out>/ca.pem`: keep it.
    if let Some(cert) = &args.ca_cert {
        let target = args.out.join("ca.pem");
        if same_file(cert, &target) {
            files.retain(|f| f.name != "ca.pem");
        }
    }
    write_files(&args.out, &files, args.force)?;
    for file in &files {
        let mode = if file.secret { " (0600)" } else { "" };
        println!("wrote {}{mode}", args.out.join(&file.name).display());
    }
    Ok(())
}

/// The node IDs named by `--nodes` or `--count`, validated and without duplicates.
pub(crate) fn node_ids(args: &Args) -> anyhow::Result<Vec<NodeId>> {
    let names: Vec<String> = match args.count {
        Some(n) => (1..=n.get()).map(|i| format!("node-{i}")).collect(),
        None => args.nodes.iter().map(|s| s.trim().to_owned()).collect(),
    };
    ensure!(!names.is_empty(), "no node IDs given");
    let mut ids = Vec::with_capacity(names.len());
    for name in names {
        let id = NodeId::new(name.clone()).with_context(|| format!("invalid node ID {name:?}"))?;
        // Reserved so that a node's files can never collide with the CA's.
        ensure!(
            id.as_str() != "ca",
            "node ID \"ca\" is reserved for the CA's files"
        );
        ensure!(!ids.contains(&id), "node ID {name:?} is given twice");
        ids.push(id);
    }
    Ok(ids)
}

/// Generates (or loads) the CA and one certificate and key per node, in memory, at time `now`.
pub(crate) fn generate(
    ca: &CaSource,
    nodes: &[NodeId],
    days: NonZeroU32,
    now: SystemTime,
) -> anyhow::Result<Vec<OutputFile>> {
    let mut files = Vec::with_capacity(2 * nodes.len() + 2);
    let node_not_after = now + days_to_duration(days);
    let (issuer, ca_cert_pem) = match ca {
        CaSource::Generate { name, days } => {
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params
                .distinguished_name
                .push(DnType::CommonName, name.as_str());
            // A CA for node certificates only: no intermediates below it.
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            set_validity(&mut params, now, now + days_to_duration(*days))?;
            let key = KeyPair::generate()?;
            let cert = params.self_signed(&key)?;
            let cert_pem = cert.pem();
            files.push(OutputFile {
                name: "ca-key.pem".into(),
                contents: key.serialize_pem(),
                secret: true,
            });
            (Issuer::new(params, key), cert_pem)
        }
        CaSource::Existing { cert_pem, key_pem } => {
            let key = KeyPair::from_pem(key_pem).context("cannot parse the CA key")?;
            check_existing_ca(cert_pem, &key, node_not_after)?;
            let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
                .context("cannot parse the CA certificate")?;
            (issuer, cert_pem.clone())
        }
    };
    files.insert(
        0,
        OutputFile {
            name: "ca.pem".into(),
            contents: ca_cert_pem,
            secret: false,
        },
    );
    for node in nodes {
        let mut params = CertificateParams::new(vec![node.as_str().to_owned()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, node.as_str());
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, now, node_not_after)?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        files.push(OutputFile {
            name: format!("{node}.pem"),
            contents: cert.pem(),
            secret: false,
        });
        files.push(OutputFile {
            name: format!("{node}-key.pem"),
            contents: key.serialize_pem(),
            secret: true,
        });
    }
    Ok(files)
}

/// Writes `files` into `dir`: refuses (before writing anything) if one exists and `force`
/// is off; private keys are created with mode 0600.
pub(crate) fn write_files(dir: &Path, files: &[OutputFile], force: bool) -> anyhow::Result<()> {
    if !force {
        let existing: Vec<String> = files
            .iter()
            .map(|f| dir.join(&f.name))
            .filter(|p| p.symlink_metadata().is_ok())
            .map(|p| p.display().to_string())
            .collect();
        if !existing.is_empty() {
            bail!(
                "refusing to overwrite existing files (use --force): {}",
                existing.join(", ")
            );
        }
    }
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for file in files {
        let path = dir.join(&file.name);
        if force {
            // Replace rather than truncate: the mode below only applies to a new file, and
            // an old key file may have been readable by others (or be a symlink).
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot replace {}", path.display()));
                }
            }
        }
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        if file.secret {
            options.mode(0o600);
        }
        let mut out = options
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        out.write_all(file.contents.as_bytes())
            .and_then(|()| out.sync_all())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Checks that an existing CA certificate is a CA, matches its key and outlives the node
/// certificates about to be issued.
fn check_existing_ca(
    cert_pem: &str,
    key: &KeyPair,
    node_not_after: SystemTime,
) -> anyhow::Result<()> {
    use rcgen::PublicKeyData as _;
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("CA certificate is not PEM: {e}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("cannot parse the CA certificate: {e}"))?;
    let is_ca = cert
        .basic_constraints()
        .map_err(|e| anyhow::anyhow!("bad basic constraints in the CA certificate: {e}"))?
        .is_some_and(|bc| bc.value.ca);
    ensure!(
        is_ca,
        "the --ca-cert certificate is not a CA (basic constraints)"
    );
    ensure!(
        cert.public_key().raw == key.subject_public_key_info().as_slice(),
        "the --ca-key does not belong to the --ca-cert certificate"
    );
    let ca_not_after = cert.validity().not_after.timestamp();
    let nodes_not_after = unix_secs(node_not_after)?;
    ensure!(
        nodes_not_after <= ca_not_after,
        "the node certificates would outlive the CA (it expires {}); choose fewer --days",
        cert.validity().not_after
    );
    Ok(())
}

/// Sets the validity window: from one hour before `now` (tolerates clock skew between
/// nodes) to `not_after`.
fn set_validity(
    params: &mut CertificateParams,
    now: SystemTime,
    not_after: SystemTime,
) -> anyhow::Result<()> {
    // rcgen takes `time::OffsetDateTime`; build it from the Unix epoch so that this crate
    // needs no direct `time` dependency.
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let since_epoch = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .context("the system clock is before 1970")
    };
    params.not_before = epoch + since_epoch(now)?.saturating_sub(Duration::from_secs(3600));
    params.not_after = epoch + since_epoch(not_after)?;
    Ok(())
}

fn days_to_duration(days: NonZeroU32) -> Duration {
    Duration::from_secs(u64::from(days.get()) * 86_400)
}

fn unix_secs(t: SystemTime) -> anyhow::Result<i64> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970")?
        .as_secs();
    i64::try_from(secs).context("time out of range")
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use clap::Parser;
    use x509_parser::certificate::X509Certificate;
    use x509_parser::extensions::GeneralName;
    use x509_parser::pem::Pem;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        Cli::try_parse_from(std::iter::once("certs").chain(argv.iter().copied())).map(|c| c.args)
    }

    fn args(out: &Path, extra: &[&str]) -> Args {
        let mut argv = vec!["--out", out.to_str().unwrap()];
        argv.extend_from_slice(extra);
        parse(&argv).unwrap()
    }

    fn read_pem(path: &Path) -> Pem {
        let bytes = fs::read(path).unwrap();
        let (rest, pem) = x509_parser::pem::parse_x509_pem(&bytes).unwrap();
        assert!(rest.iter().all(u8::is_ascii_whitespace));
        pem
    }

    fn cn<'a>(cert: &'a X509Certificate<'_>) -> &'a str {
        cert.subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
    }

    fn dns_names<'a>(cert: &'a X509Certificate<'_>) -> Vec<&'a str> {
        cert.subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(s) => Some(*s),
                _ => None,
            })
            .collect()
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn generates_a_ca_and_node_certificates_with_the_id_in_cn_and_san() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("certs");
        run(&args(&out, &["--nodes", "alpha,beta.example,gamma_3"])).unwrap();

        let ca_pem = read_pem(&out.join("ca.pem"));
        let ca = ca_pem.parse_x509().unwrap();
        assert_eq!(cn(&ca), "Nodosum CA");
        assert!(ca.basic_constraints().unwrap().unwrap().value.ca);
        assert!(ca.key_usage().unwrap().unwrap().value.key_cert_sign());

        for node in ["alpha", "beta.example", "gamma_3"] {
            let pem = read_pem(&out.join(format!("{node}.pem")));
            let cert = pem.parse_x509().unwrap();
            assert_eq!(cn(&cert), node);
            assert_eq!(dns_names(&cert), vec![node]);
            let eku = cert.extended_key_usage().unwrap().unwrap().value;
            assert!(eku.server_auth && eku.client_auth, "{node}: {eku:?}");
            assert!(!cert.is_ca());
            assert_eq!(cert.issuer(), ca.subject());
            cert.verify_signature(Some(ca.public_key())).unwrap();
            // The key file holds the key of this certificate.
            let key = KeyPair::from_pem(
                &fs::read_to_string(out.join(format!("{node}-key.pem"))).unwrap(),
            )
            .unwrap();
            use rcgen::PublicKeyData as _;
            assert_eq!(cert.public_key().raw, key.subject_public_key_info());
        }
        let mut names: Vec<String> = fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "alpha-key.pem",
                "alpha.pem",
                "beta.example-key.pem",
                "beta.example.pem",
                "ca-key.pem",
                "ca.pem",
                "gamma_3-key.pem",
                "gamma_3.pem"
            ]
        );
    }

    #[test]
    fn private_keys_are_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        run(&args(dir.path(), &["--count", "2"])).unwrap();
        for key in ["ca-key.pem", "node-1-key.pem", "node-2-key.pem"] {
            assert_eq!(mode(&dir.path().join(key)), 0o600, "{key}");
        }
        // Certificates are public: group/other may read them (whatever the umask allows),
        // but nobody gets execute or write beyond the owner.
        for cert in ["ca.pem", "node-1.pem", "node-2.pem"] {
            assert_eq!(mode(&dir.path().join(cert)) & 0o133, 0, "{cert}");
        }
    }

    #[test]
    fn count_names_nodes_one_to_n() {
        let dir = tempfile::tempdir().unwrap();
        let ids = node_ids(&args(dir.path(), &["--count", "3"])).unwrap();
        let ids: Vec<&str> = ids.iter().map(NodeId::as_str).collect();
        assert_eq!(ids, ["node-1", "node-2", "node-3"]);
    }

    #[test]
    fn invalid_duplicate_and_reserved_node_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["-leading-dash", "has space", "a/b", "ok,ok", "ca", "ok,"] {
            let flag = format!("--nodes={bad}");
            let err = node_ids(&args(dir.path(), &[&flag])).unwrap_err();
            assert!(!format!("{err:#}").is_empty(), "{bad}");
        }
        let long = "a".repeat(254);
        assert!(node_ids(&args(dir.path(), &["--nodes", &long])).is_err());
        // Nothing was written by a refused run.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn command_line_rules() {
        // One of --nodes / --count, not both; --ca-cert and --ca-key together; days > 0.
        assert!(parse(&["--out", "x"]).is_err());
        assert!(parse(&["--out", "x", "--nodes", "a", "--count", "2"]).is_err());
        assert!(parse(&["--out", "x", "--count", "0"]).is_err());
        assert!(parse(&["--out", "x", "--count", "1", "--days", "0"]).is_err());
        assert!(parse(&["--out", "x", "--count", "1", "--ca-cert", "c.pem"]).is_err());
        assert!(parse(&["--out", "x", "--count", "1", "--ca-key", "k.pem"]).is_err());
        let a = parse(&["--out", "x", "--nodes", "a,b"]).unwrap();
        assert_eq!(a.nodes, ["a", "b"]);
        assert_eq!(a.days.get(), 365);
        assert!(!a.force);
    }

    #[test]
    fn refuses_to_overwrite_and_writes_nothing_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        // A stale, world-readable key of node-2 is in the way.
        let stale = dir.path().join("node-2-key.pem");
        fs::write(&stale, "old").unwrap();
        fs::set_permissions(&stale, fs::Permissions::from_mode(0o644)).unwrap();

        let err = run(&args(dir.path(), &["--count", "2"])).unwrap_err();
        assert!(format!("{err:#}").contains("node-2-key.pem"), "{err:#}");
        assert!(format!("{err:#}").contains("--force"), "{err:#}");
        // Checked before writing: no other file appeared, the stale one is untouched.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        assert_eq!(fs::read_to_string(&stale).unwrap(), "old");

        run(&args(dir.path(), &["--count", "2", "--force"])).unwrap();
        assert!(fs::read_to_string(&stale).unwrap().contains("PRIVATE KEY"));
        // The replaced key got the safe mode, not the old file's.
        assert_eq!(mode(&stale), 0o600);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 6);
    }

    #[test]
    fn validity_follows_days() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ca = CaSource::Generate {
            name: "Test CA".into(),
            days: NonZeroU32::new(1000).unwrap(),
        };
        let node = NodeId::new("n1").unwrap();
        let files = generate(&ca, &[node], NonZeroU32::new(30).unwrap(), now).unwrap();
        let by_name = |n: &str| files.iter().find(|f| f.name == n).unwrap();
        let validity = |n: &str| {
            let (_, pem) =
                x509_parser::pem::parse_x509_pem(by_name(n).contents.as_bytes()).unwrap();
            let cert = pem.parse_x509().unwrap();
            (
                cert.validity().not_before.timestamp(),
                cert.validity().not_after.timestamp(),
            )
        };
        assert_eq!(
            validity("n1.pem"),
            (1_800_000_000 - 3600, 1_800_000_000 + 30 * 86_400)
        );
        assert_eq!(
            validity("ca.pem"),
            (1_800_000_000 - 3600, 1_800_000_000 + 1000 * 86_400)
        );
        assert!(by_name("n1-key.pem").secret && by_name("ca-key.pem").secret);
        assert!(!by_name("n1.pem").secret && !by_name("ca.pem").secret);
    }

    #[test]
    fn signs_with_an_existing_ca() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("first");
        run(&args(&first, &["--nodes", "node-1"])).unwrap();
        let ca_cert = first.join("ca.pem");
        let ca_key = first.join("ca-key.pem");
        let ca_args = [
            "--ca-cert",
            ca_cert.to_str().unwrap(),
            "--ca-key",
            ca_key.to_str().unwrap(),
        ];

        // Into another directory: the CA certificate is copied, its key is not.
        let second = dir.path().join("second");
        let mut extra = vec!["--nodes", "node-2"];
        extra.extend_from_slice(&ca_args);
        run(&args(&second, &extra)).unwrap();
        assert!(!second.join("ca-key.pem").exists());
        assert_eq!(
            fs::read_to_string(second.join("ca.pem")).unwrap(),
            fs::read_to_string(&ca_cert).unwrap()
        );
        let ca_pem = read_pem(&ca_cert);
        let ca = ca_pem.parse_x509().unwrap();
        let pem = read_pem(&second.join("node-2.pem"));
        let cert = pem.parse_x509().unwrap();
        assert_eq!(cert.issuer(), ca.subject());
        cert.verify_signature(Some(ca.public_key())).unwrap();
        assert_eq!(mode(&second.join("node-2-key.pem")), 0o600);

        // Into the CA's own directory: its ca.pem is the CA itself, not a conflict.
        let mut extra = vec!["--nodes", "node-3"];
        extra.extend_from_slice(&ca_args);
        run(&args(&first, &extra)).unwrap();
        let pem = read_pem(&first.join("node-3.pem"));
        pem.parse_x509()
            .unwrap()
            .verify_signature(Some(ca.public_key()))
            .unwrap();
    }

    #[test]
    fn an_existing_ca_must_be_a_ca_match_its_key_and_outlive_the_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate(
            &CaSource::Generate {
                name: "A".into(),
                days: NonZeroU32::new(10).unwrap(),
            },
            &[NodeId::new("leaf").unwrap()],
            NonZeroU32::new(5).unwrap(),
            SystemTime::now(),
        )
        .unwrap();
        let get = |n: &str| files.iter().find(|f| f.name == n).unwrap().contents.clone();
        let other_key = KeyPair::generate().unwrap().serialize_pem();
        let node = [NodeId::new("n").unwrap()];
        let five = NonZeroU32::new(5).unwrap();
        let try_ca = |cert_pem: String, key_pem: String, days| {
            generate(
                &CaSource::Existing { cert_pem, key_pem },
                &node,
                days,
                SystemTime::now(),
            )
            .map(|_| ())
            .map_err(|e| format!("{e:#}"))
        };

        try_ca(get("ca.pem"), get("ca-key.pem"), five).unwrap();
        let err = try_ca(get("ca.pem"), other_key, five).unwrap_err();
        assert!(err.contains("does not belong"), "{err}");
        let err = try_ca(get("leaf.pem"), get("leaf-key.pem"), five).unwrap_err();
        assert!(err.contains("not a CA"), "{err}");
        let err = try_ca(
            get("ca.pem"),
            get("ca-key.pem"),
            NonZeroU32::new(11).unwrap(),
        )
        .unwrap_err();
        assert!(err.contains("outlive"), "{err}");
        let err = try_ca("garbage".into(), get("ca-key.pem"), five).unwrap_err();
        assert!(err.contains("PEM"), "{err}");
        // None of this touched the disk.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
