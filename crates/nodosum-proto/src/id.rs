//! Validated identifiers: [`NodeId`] and [`AppId`].

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Longest node ID in bytes: the longest DNS name, since the ID also appears in the
/// node's certificate as a SAN DNS name.
pub const MAX_NODE_ID_LEN: usize = 253;

/// Why a string is not a valid [`NodeId`] or [`AppId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The identifier is empty.
    #[error("identifier is empty")]
    Empty,
    /// The identifier is longer than allowed.
    #[error("identifier is {len} bytes, at most {max} allowed")]
    TooLong {
        /// Length in bytes.
        len: usize,
        /// Largest allowed length in bytes.
        max: usize,
    },
    /// The identifier holds a character that is not allowed at that position.
    #[error("character {ch:?} at byte {at} is not allowed")]
    InvalidChar {
        /// The offending character.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
}

/// The identity of a node: the name in its certificate and in its gossip identity.
///
/// 1 to [`MAX_NODE_ID_LEN`] bytes of ASCII letters, digits, `-`, `_` and `.`, starting with
/// a letter or digit, so that it is a valid certificate CN and SAN DNS name and safe to
/// print in logs and metric labels. Comparison is exact (case-sensitive).
///
/// Cloning is cheap (a reference count): the transport attaches the sender's ID to every
/// delivered message.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(Arc<str>);

impl NodeId {
    /// Validates `id` and wraps it.
    pub fn new(id: impl Into<String>) -> Result<Self, IdError> {
        let id = id.into();
        validate_node_id(&id)?;
        Ok(Self(id.into()))
    }

    /// The ID as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn validate_node_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > MAX_NODE_ID_LEN {
        return Err(IdError::TooLong {
            len: id.len(),
            max: MAX_NODE_ID_LEN,
        });
    }
    for (at, ch) in id.char_indices() {
        let ok = ch.is_ascii_alphanumeric() || (at > 0 && matches!(ch, '-' | '_' | '.'));
        if !ok {
            return Err(IdError::InvalidChar { ch, at });
        }
    }
    Ok(())
}

impl TryFrom<String> for NodeId {
    type Error = IdError;
    fn try_from(id: String) -> Result<Self, IdError> {
        Self::new(id)
    }
}

impl TryFrom<&str> for NodeId {
    type Error = IdError;
    fn try_from(id: &str) -> Result<Self, IdError> {
        Self::new(id)
    }
}

impl FromStr for NodeId {
    type Err = IdError;
    fn from_str(id: &str) -> Result<Self, IdError> {
        Self::new(id)
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> Self {
        (*id.0).to_owned()
    }
}

impl AsRef<str> for NodeId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// The name of an application (a channel) on a node, as carried in [`StreamInit`].
///
/// Non-empty UTF-8 without control characters, at most `u16::MAX` bytes (what the wire
/// format can carry). The configured [`Limits::max_app_id_len`] (default 255) is enforced
/// where frames are encoded and decoded.
///
/// [`StreamInit`]: crate::StreamInit
/// [`Limits::max_app_id_len`]: crate::Limits::max_app_id_len
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AppId(Box<str>);

impl AppId {
    /// Validates `id` and wraps it.
    pub fn new(id: impl Into<String>) -> Result<Self, IdError> {
        let id = id.into();
        validate_app_id(&id, usize::from(u16::MAX))?;
        Ok(Self(id.into_boxed_str()))
    }

    /// Validates `id` against a tighter length limit than the wire format's.
    pub(crate) fn with_max_len(id: &str, max: usize) -> Result<Self, IdError> {
        validate_app_id(id, max.min(usize::from(u16::MAX)))?;
        Ok(Self(id.into()))
    }

    /// The ID as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn validate_app_id(id: &str, max: usize) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > max {
        return Err(IdError::TooLong { len: id.len(), max });
    }
    if let Some((at, ch)) = id.char_indices().find(|(_, ch)| ch.is_control()) {
        return Err(IdError::InvalidChar { ch, at });
    }
    Ok(())
}

impl TryFrom<String> for AppId {
    type Error = IdError;
    fn try_from(id: String) -> Result<Self, IdError> {
        Self::new(id)
    }
}

impl TryFrom<&str> for AppId {
    type Error = IdError;
    fn try_from(id: &str) -> Result<Self, IdError> {
        Self::new(id)
    }
}

impl FromStr for AppId {
    type Err = IdError;
    fn from_str(id: &str) -> Result<Self, IdError> {
        Self::new(id)
    }
}

impl From<AppId> for String {
    fn from(id: AppId) -> Self {
        id.0.into()
    }
}

impl AsRef<str> for AppId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn node_id_accepts_hostnames() {
        for ok in ["node-1", "a", "mycel.example.com", "host_6969", "0"] {
            assert_eq!(NodeId::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn node_id_rejects_bad_input() {
        assert_eq!(NodeId::new(""), Err(IdError::Empty));
        assert_eq!(
            NodeId::new("-x"),
            Err(IdError::InvalidChar { ch: '-', at: 0 })
        );
        assert_eq!(
            NodeId::new("a b"),
            Err(IdError::InvalidChar { ch: ' ', at: 1 })
        );
        assert_eq!(
            NodeId::new("nö"),
            Err(IdError::InvalidChar { ch: 'ö', at: 1 })
        );
        let long = "a".repeat(MAX_NODE_ID_LEN + 1);
        assert_eq!(
            NodeId::new(long),
            Err(IdError::TooLong {
                len: MAX_NODE_ID_LEN + 1,
                max: MAX_NODE_ID_LEN
            })
        );
        assert!(NodeId::new("a".repeat(MAX_NODE_ID_LEN)).is_ok());
        // Clones share the string (cheap to clone per delivered message).
        let id = NodeId::new("node-1").unwrap();
        assert!(std::ptr::eq(id.as_str(), id.clone().as_str()));
    }

    #[test]
    fn node_id_deserialisation_validates() {
        let bytes = postcard::to_allocvec("bad id").unwrap();
        assert!(postcard::from_bytes::<NodeId>(&bytes).is_err());
        let bytes = postcard::to_allocvec("good-id").unwrap();
        assert_eq!(
            postcard::from_bytes::<NodeId>(&bytes).unwrap().as_str(),
            "good-id"
        );
    }

    #[test]
    fn app_id_rules() {
        assert!(AppId::new("mycel/rpc v1 ✓").is_ok());
        assert_eq!(AppId::new(""), Err(IdError::Empty));
        assert_eq!(
            AppId::new("a\nb"),
            Err(IdError::InvalidChar { ch: '\n', at: 1 })
        );
        assert!(AppId::new("x".repeat(usize::from(u16::MAX))).is_ok());
        assert!(AppId::new("x".repeat(usize::from(u16::MAX) + 1)).is_err());
        assert_eq!(
            AppId::with_max_len("abcd", 3),
            Err(IdError::TooLong { len: 4, max: 3 })
        );
    }

    proptest! {
        #[test]
        fn node_id_valid_iff_rules_hold(s in "\\PC{0,20}") {
            let valid = !s.is_empty()
                && s.len() <= MAX_NODE_ID_LEN
                && s.char_indices().all(|(i, c)| c.is_ascii_alphanumeric()
                    || (i > 0 && matches!(c, '-' | '_' | '.')));
            prop_assert_eq!(NodeId::new(s.clone()).is_ok(), valid);
        }

        #[test]
        fn node_id_display_round_trips(s in "[a-z0-9][a-z0-9._-]{0,40}") {
            let id = NodeId::new(s.clone()).unwrap();
            prop_assert_eq!(id.to_string().parse::<NodeId>().unwrap(), id);
        }
    }
}
