//! A node's gossip identity and its versioned encoding.

use std::net::SocketAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::id::{IdError, NodeId};

/// Largest metadata a member may carry, in bytes.
pub const MAX_METADATA_LEN: usize = 512;

/// The version byte written in front of an encoded [`Member`].
///
/// Compatibility rule: fields are only ever appended to the encoding, and decoders ignore
/// bytes after the fields they know, so an older node reads a newer member. The version is
/// bumped only for a change an older decoder must not misread; decoders refuse versions
/// newer than the one they implement.
pub const MEMBER_VERSION: u8 = 1;

/// Application metadata a member gossips about itself, at most [`MAX_METADATA_LEN`] bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Metadata(Box<[u8]>);

impl Metadata {
    /// Wraps `bytes` if they fit in [`MAX_METADATA_LEN`].
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, MemberError> {
        let bytes = bytes.into();
        if bytes.len() > MAX_METADATA_LEN {
            return Err(MemberError::MetadataTooLarge {
                len: bytes.len(),
                max: MAX_METADATA_LEN,
            });
        }
        Ok(Self(bytes.into_boxed_slice()))
    }

    /// The metadata bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether there is no metadata.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TryFrom<Vec<u8>> for Metadata {
    type Error = MemberError;
    fn try_from(bytes: Vec<u8>) -> Result<Self, MemberError> {
        Self::new(bytes)
    }
}

/// Why bytes are not a valid encoded [`Member`], or a member cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberError {
    /// No bytes at all.
    #[error("member encoding is empty")]
    Empty,
    /// Encoded by a newer, incompatible release.
    #[error("member encoding version {found} is not supported (at most {MEMBER_VERSION})")]
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
    },
    /// The fields after the version byte do not decode.
    #[error("malformed member encoding: {0}")]
    Malformed(#[from] postcard::Error),
    /// The node ID inside is invalid.
    #[error("invalid node id in member: {0}")]
    InvalidId(#[from] IdError),
    /// Metadata longer than [`MAX_METADATA_LEN`].
    #[error("metadata is {len} bytes, at most {max} allowed")]
    MetadataTooLarge {
        /// Length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// A node's identity in the gossip layer.
///
/// Two members with the same [`id`](Self::id) are the same node; a higher
/// [`incarnation`](Self::incarnation) is a newer life of it (after a restart or a metadata
/// change). Equality compares every field.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Member {
    /// The node's ID, equal to the identity in its certificate.
    pub id: NodeId,
    /// Where the node's gossip socket listens (the address others send datagrams to).
    ///
    /// IPv6 flow info and scope IDs are not carried on the wire; they are zero after
    /// decoding.
    pub gossip_addr: SocketAddr,
    /// The UDP port of the node's QUIC endpoint, on the gossip address's IP.
    pub quic_port: u16,
    /// Incremented each time the node renews its identity.
    pub incarnation: u64,
    /// Application metadata.
    pub metadata: Metadata,
}

#[derive(Serialize)]
struct WireV1<'a> {
    id: &'a str,
    gossip_addr: SocketAddr,
    quic_port: u16,
    incarnation: u64,
    metadata: &'a [u8],
}

#[derive(Deserialize)]
struct WireV1In<'a> {
    id: &'a str,
    gossip_addr: SocketAddr,
    quic_port: u16,
    incarnation: u64,
    metadata: &'a [u8],
}

impl Member {
    /// A member with empty metadata and incarnation 0.
    pub fn new(id: NodeId, gossip_addr: SocketAddr, quic_port: u16) -> Self {
        Self {
            id,
            gossip_addr,
            quic_port,
            incarnation: 0,
            metadata: Metadata::default(),
        }
    }

    /// The address of the node's QUIC endpoint.
    pub fn quic_addr(&self) -> SocketAddr {
        SocketAddr::new(self.gossip_addr.ip(), self.quic_port)
    }

    /// Encodes the member: `[MEMBER_VERSION][postcard fields]`.
    pub fn encode(&self) -> Vec<u8> {
        let wire = WireV1 {
            id: self.id.as_str(),
            gossip_addr: self.gossip_addr,
            quic_port: self.quic_port,
            incarnation: self.incarnation,
            metadata: self.metadata.as_bytes(),
        };
        let mut out = vec![MEMBER_VERSION];
        // Serialising plain fields into a Vec cannot fail: postcard only errors on unsized
        // sequences and on a full fixed buffer, neither of which occurs here.
        out.extend(postcard::to_allocvec(&wire).expect("postcard into a Vec is infallible"));
        out
    }

    /// Decodes a member written by [`encode`](Self::encode), by this or a newer compatible
    /// release (trailing bytes from appended fields are ignored).
    pub fn decode(bytes: &[u8]) -> Result<Self, MemberError> {
        let (&version, body) = bytes.split_first().ok_or(MemberError::Empty)?;
        if version == 0 || version > MEMBER_VERSION {
            return Err(MemberError::UnsupportedVersion { found: version });
        }
        let (wire, _newer_fields) = postcard::take_from_bytes::<WireV1In<'_>>(body)?;
        Ok(Self {
            id: NodeId::new(wire.id)?,
            gossip_addr: wire.gossip_addr,
            quic_port: wire.quic_port,
            incarnation: wire.incarnation,
            metadata: Metadata::new(wire.metadata)?,
        })
    }
}

/// Serde embeds a member as one byte string holding [`Member::encode`], so that members
/// inside other messages (foca's) keep the versioned, extensible encoding.
impl Serialize for Member {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.encode())
    }
}

impl<'de> Deserialize<'de> for Member {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Member;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an encoded nodosum member")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Member, E> {
                Member::decode(v).map_err(E::custom)
            }
        }
        d.deserialize_bytes(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn sample() -> Member {
        Member {
            id: NodeId::new("node-1").unwrap(),
            gossip_addr: "127.0.0.1:6969".parse().unwrap(),
            quic_port: 6970,
            incarnation: 7,
            metadata: Metadata::new(b"zone=a".to_vec()).unwrap(),
        }
    }

    #[test]
    fn encoding_is_stable() {
        // Pinned bytes: changing them breaks mixed-version clusters.
        let bytes = sample().encode();
        let expected: &[u8] = &[
            1, // version
            6, b'n', b'o', b'd', b'e', b'-', b'1', // id
            0, 127, 0, 0, 1, 0xb9, 0x36, // V4 127.0.0.1, port 6969 as varint
            0xba, 0x36, // quic port 6970 varint
            7,    // incarnation
            6, b'z', b'o', b'n', b'e', b'=', b'a',
        ];
        assert_eq!(bytes, expected);
        assert_eq!(Member::decode(&bytes).unwrap(), sample());
    }

    #[test]
    fn newer_fields_are_ignored_and_newer_versions_refused() {
        let mut bytes = sample().encode();
        bytes.extend_from_slice(b"field added by a later release");
        assert_eq!(Member::decode(&bytes).unwrap(), sample());
        bytes[0] = MEMBER_VERSION + 1;
        assert_eq!(
            Member::decode(&bytes),
            Err(MemberError::UnsupportedVersion {
                found: MEMBER_VERSION + 1
            })
        );
        assert_eq!(Member::decode(&[]), Err(MemberError::Empty));
        assert_eq!(
            Member::decode(&[0]),
            Err(MemberError::UnsupportedVersion { found: 0 })
        );
    }

    #[test]
    fn invalid_contents_are_typed_errors() {
        let mut m = sample().encode();
        m[2] = b' '; // "n" -> " " in the node id
        assert!(matches!(Member::decode(&m), Err(MemberError::InvalidId(_))));
        assert_eq!(
            Metadata::new(vec![0; MAX_METADATA_LEN + 1]),
            Err(MemberError::MetadataTooLarge {
                len: MAX_METADATA_LEN + 1,
                max: MAX_METADATA_LEN
            })
        );
        // Oversized metadata inside an encoding is refused too.
        let wire = WireV1 {
            id: "n",
            gossip_addr: "[::1]:1".parse().unwrap(),
            quic_port: 2,
            incarnation: 0,
            metadata: &[1; MAX_METADATA_LEN + 1],
        };
        let mut bytes = vec![MEMBER_VERSION];
        bytes.extend(postcard::to_allocvec(&wire).unwrap());
        assert!(matches!(
            Member::decode(&bytes),
            Err(MemberError::MetadataTooLarge { .. })
        ));
        // A length prefix claiming far more than is there fails without allocating it.
        let claim = [MEMBER_VERSION, 0xff, 0xff, 0xff, 0xff, 0x0f, b'a'];
        assert!(matches!(
            Member::decode(&claim),
            Err(MemberError::Malformed(_))
        ));
    }

    #[test]
    fn serde_embeds_the_versioned_encoding() {
        let bytes = postcard::to_allocvec(&(5u8, sample())).unwrap();
        let (n, m): (u8, Member) = postcard::from_bytes(&bytes).unwrap();
        assert_eq!((n, m), (5, sample()));
    }

    fn arb_member() -> impl Strategy<Value = Member> {
        (
            "[a-z0-9][a-z0-9.-]{0,30}",
            // Only what the wire carries: no IPv6 flow info or scope ID.
            any::<SocketAddr>().prop_map(|a| SocketAddr::new(a.ip(), a.port())),
            any::<u16>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..=MAX_METADATA_LEN),
        )
            .prop_map(|(id, gossip_addr, quic_port, incarnation, meta)| Member {
                id: NodeId::new(id).unwrap(),
                gossip_addr,
                quic_port,
                incarnation,
                metadata: Metadata::new(meta).unwrap(),
            })
    }

    proptest! {
        #[test]
        fn round_trips(m in arb_member()) {
            prop_assert_eq!(Member::decode(&m.encode()).unwrap(), m);
        }

        #[test]
        fn garbage_and_truncations_never_panic(m in arb_member(), junk in proptest::collection::vec(any::<u8>(), 0..64), cut in any::<prop::sample::Index>()) {
            let _ = Member::decode(&junk);
            let bytes = m.encode();
            let cut = cut.index(bytes.len());
            // Every strict prefix lacks a field, so it must fail.
            prop_assert!(Member::decode(&bytes[..cut]).is_err());
        }
    }
}
