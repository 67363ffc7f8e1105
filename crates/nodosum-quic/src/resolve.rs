//! The deterministic rules that make both ends of a pair agree, with no I/O.
//!
//! Two nodes may dial each other at the same moment (two connections) and may open a
//! stream for the same application at the same moment (two streams). Each side applies the
//! same rules to what it sees, so both keep the same connection and the same stream:
//!
//! - **Connections:** among a peer's live connections, the one initiated by the smaller
//!   node ID wins; between two of the same initiator, the newer one (a redial replaced a
//!   connection that is not yet known to be dead).
//! - **Streams:** only streams on the winning connection are used; on it, when both sides
//!   opened a stream for the same application, the one opened by the smaller node ID wins.
//!
//! A side that gives up a stream first finishes its half and waits until the peer has read
//! it to the end and finished its own half; only then does it write on the winner. So the
//! messages of one (peer, application) are delivered in order across a handover.

/// Whether a connection is preferred: it was initiated by the smaller of the two node IDs.
pub(crate) fn preferred(initiated_by_us: bool, local_is_smaller: bool) -> bool {
    initiated_by_us == local_is_smaller
}

/// What a stream writer does with a stream the peer opened for its (peer, application).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attach {
    /// Use it: there is no current stream.
    Adopt,
    /// Give up the current stream (finish, wait for the peer's finish), then use this one.
    ReplaceCurrent,
    /// Do not use it: read it to its end, then finish it.
    Reject,
}

/// The current stream of a writer, as far as the rule cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamSide {
    /// The connection the stream is on.
    pub(crate) conn: u64,
    /// Whether this side opened it.
    pub(crate) opened_by_us: bool,
}

/// Decides what to do with a peer-opened stream on connection `incoming_conn`.
pub(crate) fn attach(
    current: Option<StreamSide>,
    incoming_conn: u64,
    current_conn: Option<u64>,
    local_is_smaller: bool,
) -> Attach {
    if current_conn != Some(incoming_conn) {
        return Attach::Reject;
    }
    match current {
        None => Attach::Adopt,
        Some(cur) if Some(cur.conn) != current_conn => Attach::ReplaceCurrent,
        // Simultaneous open on the winning connection: the smaller node's stream wins.
        Some(cur) if cur.opened_by_us && local_is_smaller => Attach::Reject,
        // The peer's stream wins, or the peer replaced a stream it had opened before.
        Some(_) => Attach::ReplaceCurrent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_prefer_the_same_connection() {
        // Node "a" < node "b". The connection a dialled is preferred on both sides.
        let a_dialled_seen_by_a = preferred(true, true);
        let a_dialled_seen_by_b = preferred(false, false);
        let b_dialled_seen_by_a = preferred(false, true);
        let b_dialled_seen_by_b = preferred(true, false);
        assert!(a_dialled_seen_by_a && a_dialled_seen_by_b);
        assert!(!b_dialled_seen_by_a && !b_dialled_seen_by_b);
    }

    #[test]
    fn simultaneous_stream_open_converges() {
        let ours = Some(StreamSide {
            conn: 1,
            opened_by_us: true,
        });
        // The smaller side keeps its own stream and rejects the peer's...
        assert_eq!(attach(ours, 1, Some(1), true), Attach::Reject);
        // ...and the larger side gives up its own for the smaller side's.
        assert_eq!(attach(ours, 1, Some(1), false), Attach::ReplaceCurrent);
    }

    #[test]
    fn streams_follow_the_winning_connection() {
        assert_eq!(attach(None, 1, Some(1), false), Attach::Adopt);
        // A stream on a losing (or unknown) connection is never used.
        assert_eq!(attach(None, 2, Some(1), true), Attach::Reject);
        assert_eq!(attach(None, 2, None, true), Attach::Reject);
        // A current stream on an old connection is replaced by one on the winner.
        let old = Some(StreamSide {
            conn: 7,
            opened_by_us: true,
        });
        assert_eq!(attach(old, 1, Some(1), true), Attach::ReplaceCurrent);
        // A peer-opened stream is superseded by a newer one from the peer.
        let theirs = Some(StreamSide {
            conn: 1,
            opened_by_us: false,
        });
        assert_eq!(attach(theirs, 1, Some(1), true), Attach::ReplaceCurrent);
    }
}
