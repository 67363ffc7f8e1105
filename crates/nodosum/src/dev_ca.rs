//! The development CA: one per user and machine, so that development nodes started
//! separately trust each other without any files prepared.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use nodosum_proto::Key;
use nodosum_quic::DevCa;

use crate::error::Error;

/// The common name of the development CA; part of its deterministic parameters.
const CA_NAME: &str = "Nodosum development CA";
const CERT_FILE: &str = "ca.pem";
const KEY_FILE: &str = "ca-key.pem";

/// `$XDG_DATA_HOME/nodosum/dev-ca`, else `~/.local/share/nodosum/dev-ca`, else a directory
/// in the system's temporary directory.
pub(crate) fn default_dir() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".local/share"))
        })
        .unwrap_or_else(std::env::temp_dir);
    base.join("nodosum").join("dev-ca")
}

/// Loads the development CA from `dir`, creating it first if it does not exist.
///
/// Safe when several nodes start at once: the CA is written to a private temporary
/// directory that is then renamed into place; a loser of that race discards its own CA and
/// loads the winner's, so every node ends up with the same CA.
pub(crate) fn load_or_create(dir: &Path) -> Result<DevCa, Error> {
    if !dir.join(CERT_FILE).exists() {
        create(dir)?;
    }
    let io = |source| Error::DevCa {
        dir: dir.to_owned(),
        source,
    };
    let cert = std::fs::read_to_string(dir.join(CERT_FILE)).map_err(io)?;
    let key = std::fs::read_to_string(dir.join(KEY_FILE)).map_err(io)?;
    Ok(DevCa::from_pem(CA_NAME, &cert, &key)?)
}

fn create(dir: &Path) -> Result<(), Error> {
    let io = |source| Error::DevCa {
        dir: dir.to_owned(),
        source,
    };
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io)?;
    let ca = DevCa::generate(CA_NAME)?;
    let tmp = parent.join(format!(
        ".{}.tmp-{}-{}",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("dev-ca"),
        std::process::id(),
        unique()
    ));
    std::fs::create_dir(&tmp).map_err(io)?;
    let written = write_file(&tmp.join(CERT_FILE), ca.cert_pem().as_bytes(), 0o644)
        .and_then(|()| write_file(&tmp.join(KEY_FILE), ca.key_pem().as_bytes(), 0o600));
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(io(e));
    }
    // Renaming onto an existing non-empty directory fails: another node won the race.
    if std::fs::rename(&tmp, dir).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
        if !dir.join(CERT_FILE).exists() {
            return Err(io(std::io::Error::other(
                "exists but holds no ca.pem; remove it to let a new development CA be created",
            )));
        }
    } else {
        tracing::info!(dir = %dir.display(), "created the development CA");
    }
    Ok(())
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// The gossip key of development clusters: derived from the development CA's key, so every
/// node of one machine shares it and nothing else does.
pub(crate) fn gossip_key(ca: &DevCa) -> Key {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"nodosum development gossip key v1\0");
    ctx.update(ca.key_pem().as_bytes());
    let digest = ctx.finish();
    Key::from_slice(digest.as_ref()).expect("SHA-256 is 32 bytes")
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn created_once_then_reused_with_private_key_file() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("dev-ca");
        let a = load_or_create(&dir).unwrap();
        let b = load_or_create(&dir).unwrap();
        assert_eq!(a.cert_pem(), b.cert_pem());
        assert_eq!(gossip_key(&a), gossip_key(&b));
        let mode = std::fs::metadata(dir.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn concurrent_creators_agree_on_one_ca() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("dev-ca");
        let pems: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| load_or_create(&dir).unwrap().cert_pem()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(pems.windows(2).all(|w| w[0] == w[1]));
        let leftovers = std::fs::read_dir(base.path()).unwrap().count();
        assert_eq!(leftovers, 1, "temporary directories must be cleaned up");
    }

    #[test]
    fn a_reloaded_ca_issues_certificates_peers_accept() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("dev-ca");
        let first = load_or_create(&dir).unwrap();
        let again = load_or_create(&dir).unwrap();
        let id = nodosum_proto::NodeId::new("n1").unwrap();
        let identity = again.issue(&id).unwrap();
        assert_eq!(identity.ca_roots, vec![first.cert_der()]);
        assert_eq!(identity.node_id().unwrap(), id);
    }
}
