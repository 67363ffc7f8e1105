//! Client authentication, as Redis's `requirepass`: one password for the `default` user.
//!
//! With a password set (`--requirepass` or `--requirepass-file`), a new connection may run
//! only `AUTH`, `HELLO` with its `AUTH` option, and `QUIT`; anything else is answered
//! `NOAUTH` until it authenticates. Without one, every connection is authenticated from
//! the start, and `AUTH` answers as Redis does for its passwordless default user.

use std::io::Read as _;
use std::path::Path;
use std::sync::{PoisonError, RwLock};

use ring::digest::{SHA256, digest};

use crate::resp::cmd::Credentials;
use crate::resp::frame::Frame;
use crate::resp::parse::RequestLimits;

/// The reply to a command refused before authentication.
pub(crate) const NOAUTH: &str = "NOAUTH Authentication required.";

/// The reply to `HELLO` without `AUTH` before authentication.
pub(crate) const NOAUTH_HELLO: &str = "NOAUTH HELLO must be called with the client already \
     authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to \
     authenticate the client and select the RESP protocol version at the same time";

/// The reply to a wrong user name or password.
const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

/// The reply to the one-argument `AUTH` on a server without a password.
const NO_PASSWORD: &str = "ERR AUTH <password> called without any password configured for \
     the default user. Are you sure your configuration is correct?";

/// The only user: Redis's `default`.
const DEFAULT_USER: &[u8] = b"default";

/// The password clients authenticate with, kept as its SHA-256 digest (as Redis keeps
/// its users' passwords): a check compares two digests of fixed length in constant time,
/// so its timing tells nothing of the password.
pub(crate) struct Password {
    digest: [u8; 32],
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(redacted)")
    }
}

impl Password {
    pub(crate) fn new(password: &[u8]) -> Self {
        Self {
            digest: sha256(password),
        }
    }

    /// Whether `given` is this password.
    fn matches(&self, given: &[u8]) -> bool {
        let given = sha256(given);
        let diff = self
            .digest
            .iter()
            .zip(given)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, data).as_ref());
    out
}

/// The longest password accepted.
pub(crate) const MAX_PASSWORD_LEN: usize = 4096;

/// A password (or token) as given: refused, with what is wrong, if empty or longer than
/// [`MAX_PASSWORD_LEN`].
pub(crate) fn password(given: &[u8]) -> Result<Password, &'static str> {
    if given.is_empty() {
        return Err("empty");
    }
    if given.len() > MAX_PASSWORD_LEN {
        return Err("longer than 4096 bytes");
    }
    Ok(Password::new(given))
}

/// The password in the first line of the file at `path` (without its line end).
pub(crate) fn password_file(path: &Path) -> Result<Password, String> {
    let mut bytes = Vec::new();
    // Up to two bytes more than a password may have: its line end, or the sign that
    // the line is too long.
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PASSWORD_LEN as u64 + 2).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    password(line.strip_suffix(b"\r").unwrap_or(line))
        .map_err(|m| format!("the first line of {} is {m}", path.display()))
}

/// A secret the server checks (the client password of `--requirepass`, the admin API's
/// token): none, or one that a reload (SIGHUP, when it came from a file) may replace
/// while the server runs. Connections that authenticated with the old password stay
/// authenticated, as in Redis.
#[derive(Debug)]
pub(crate) struct Secret(RwLock<Option<Password>>);

impl Secret {
    pub(crate) fn new(secret: Option<Password>) -> Self {
        Self(RwLock::new(secret))
    }

    /// Whether there is one to check.
    pub(crate) fn is_set(&self) -> bool {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// [`check`] against the current password (for `AUTH`).
    pub(crate) fn check(&self, credentials: &Credentials) -> Result<(), Frame> {
        check(
            self.0
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref(),
            credentials,
        )
    }

    /// Whether `given` is the current secret (false when there is none).
    pub(crate) fn matches(&self, given: &[u8]) -> bool {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|s| s.matches(given))
    }

    /// Makes `secret` the one to give from now on.
    pub(crate) fn replace(&self, secret: Password) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Some(secret);
    }
}

/// Checks `credentials` against the server's password (`None`: no password set):
/// `Ok(())` authenticates the connection, `Err` is the reply (and changes nothing, as in
/// Redis: a connection that was authenticated stays so).
pub(crate) fn check(password: Option<&Password>, credentials: &Credentials) -> Result<(), Frame> {
    let user_ok = credentials
        .user
        .as_deref()
        .is_none_or(|u| u == DEFAULT_USER);
    match password {
        // Redis's passwordless default user takes any password, but the one-argument
        // form is a configuration mistake worth pointing out.
        None if credentials.user.is_none() => Err(Frame::Error(NO_PASSWORD.to_owned())),
        None if user_ok => Ok(()),
        Some(p) if user_ok && p.matches(&credentials.password) => Ok(()),
        _ => Err(Frame::Error(WRONGPASS.to_owned())),
    }
}

/// What a connection may send before it authenticates, as Redis limits it: requests of
/// at most 10 arguments of at most 16 KiB each (inline lines too); anything larger is a
/// protocol error that closes the connection. So a client without the password cannot
/// make the server buffer more than that.
pub(crate) fn unauthenticated_limits(limits: RequestLimits) -> RequestLimits {
    const MAX_LEN: usize = 16 * 1024;
    RequestLimits {
        max_bulk_len: limits.max_bulk_len.min(MAX_LEN),
        max_discard_len: limits.max_discard_len.min(MAX_LEN),
        max_args: limits.max_args.min(10),
        max_inline_len: limits.max_inline_len.min(MAX_LEN),
    }
}

/// The commands a connection may run before it authenticates.
pub(crate) fn allowed_before_auth(name: &str) -> bool {
    matches!(name, "auth" | "hello" | "quit")
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn creds(user: Option<&'static str>, password: &'static str) -> Credentials {
        Credentials {
            user: user.map(|u| Bytes::from_static(u.as_bytes())),
            password: Bytes::from_static(password.as_bytes()),
        }
    }

    fn error(r: Result<(), Frame>) -> String {
        match r {
            Err(Frame::Error(e)) => e,
            other => panic!("expected an error reply, got {other:?}"),
        }
    }

    #[test]
    fn with_a_password_only_it_and_the_default_user_pass() {
        let p = Password::new(b"s3cret");
        assert_eq!(check(Some(&p), &creds(None, "s3cret")), Ok(()));
        assert_eq!(check(Some(&p), &creds(Some("default"), "s3cret")), Ok(()));
        for wrong in [
            creds(None, "s3cre"),
            creds(None, "s3cret "),
            creds(None, ""),
            creds(Some("default"), "wrong"),
            creds(Some("bob"), "s3cret"),
            creds(Some("DEFAULT"), "s3cret"),
        ] {
            assert!(error(check(Some(&p), &wrong)).starts_with("WRONGPASS "));
        }
    }

    #[test]
    fn without_a_password_the_default_user_takes_any() {
        assert_eq!(check(None, &creds(Some("default"), "anything")), Ok(()));
        assert!(error(check(None, &creds(Some("bob"), "x"))).starts_with("WRONGPASS "));
        assert!(
            error(check(None, &creds(None, "x")))
                .starts_with("ERR AUTH <password> called without any password configured")
        );
    }

    #[test]
    fn the_password_never_shows_in_debug_output() {
        let p = Password::new(b"hunter2");
        assert_eq!(format!("{p:?}"), "Password(redacted)");
    }

    #[test]
    fn only_auth_hello_and_quit_run_before_authentication() {
        for name in ["auth", "hello", "quit"] {
            assert!(allowed_before_auth(name), "{name}");
        }
        for name in ["get", "set", "ping", "client", "info", "command", "multi"] {
            assert!(!allowed_before_auth(name), "{name}");
        }
    }
}
