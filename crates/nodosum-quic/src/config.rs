//! Endpoint configuration with the seed's defaults.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use nodosum_proto::Limits;

use crate::tls::DEFAULT_ALPN;

/// Smallest [`Config::max_ack_delay`]: QUIC's timer granularity (a peer refuses a smaller
/// request).
pub const MIN_ACK_DELAY: Duration = Duration::from_millis(1);
/// Largest [`Config::max_ack_delay`]: what QUIC's transport parameter can carry (2^14 ms).
pub const MAX_ACK_DELAY: Duration = Duration::from_millis((1 << 14) - 1);

/// Default QUIC port of a node (seed value).
pub const DEFAULT_PORT: u16 = 6970;

/// Configuration of a [`QuicNode`](crate::QuicNode).
///
/// Every field has a default; [`Config::default`] binds `0.0.0.0:6970`, tests and
/// single-machine setups use [`Config::development`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Address the UDP socket binds to. Default `0.0.0.0:6970` (seed).
    pub bind_addr: SocketAddr,
    /// ALPN protocol both sides must speak. Default `mycorrizal-quic` (seed).
    pub alpn: Vec<u8>,
    /// UDP socket send buffer (`SO_SNDBUF`) in bytes. Default 4 MiB.
    ///
    /// quinn does not size the socket buffers itself; with the kernel's default of 208 KiB
    /// a busy endpoint drops packets even on loopback. The kernel may cap the value at
    /// `net.core.wmem_max`; the applied size is logged.
    pub udp_send_buffer: usize,
    /// UDP socket receive buffer (`SO_RCVBUF`) in bytes. Default 4 MiB (see
    /// `udp_send_buffer`; capped by `net.core.rmem_max`).
    pub udp_recv_buffer: usize,
    /// A connection without any packet for this long is closed. Default 30 s (seed).
    pub max_idle_timeout: Duration,
    /// Interval of keep-alive pings on an idle connection; must be below
    /// `max_idle_timeout`. Default 10 s (seed).
    pub keep_alive_interval: Duration,
    /// Bidirectional streams a peer may have open at once (one per application, so this
    /// bounds the applications per peer). Default 1000 (seed).
    pub max_concurrent_bidi_streams: u32,
    /// Unread bytes the peer may send on one stream (per-stream flow-control window).
    /// Default 1 MiB: one stalled application can park at most this much at the receiver,
    /// while 1 MiB in flight per stream keeps a 1 ms-RTT path at about 8 Gbit/s.
    pub stream_receive_window: u32,
    /// Unread bytes the peer may send on the whole connection. Default 64 MiB: room for many
    /// stalled streams' windows before a stall could eat into the connection's credit.
    pub receive_window: u32,
    /// Bytes this side buffers for sending on one connection. Default 16 MiB.
    pub send_window: u64,
    /// Congestion controller of every connection. Default [`Congestion::Cubic`].
    pub congestion: Congestion,
    /// Longest time the peer may hold back an acknowledgement, requested through QUIC's
    /// ACK frequency extension (both sides are Nodosum, so both speak it). 1 ms to
    /// 16 383 ms; default 1 ms. quinn caps the request at the greater of the round-trip
    /// time and 25 ms.
    ///
    /// It also sets how soon a lost packet that no later packet reveals (the tail of a
    /// burst) is probed for: after about RTT + 4 x RTT variance + this delay. QUIC's own
    /// default is 25 ms, which on a sub-millisecond cluster link stalls a connection for
    /// dozens of round trips at every such loss. With 1 ms, ten applications across two
    /// network namespaces dropping 1 % of packets moved about twice as much, and at 5 %
    /// four times as much (the `packet_loss` section of the transport benchmark). A busy
    /// connection acknowledges every second packet anyway; an idle one sends its
    /// acknowledgement after 1 ms instead of 25.
    pub max_ack_delay: Duration,
    /// Frame size limits of the wire format (message size, app ID length).
    pub limits: Limits,
    /// Messages queued per (peer, application) before `send` waits and `try_send` fails.
    /// Default 1024. The lane's writer takes up to 64 of them at a time out of the queue
    /// (room for as many new ones), so a lane holds at most this many plus 64 unwritten.
    pub send_queue_len: usize,
    /// Queued bytes the stream writer gathers into one write. Default 64 KiB: large enough
    /// to amortise the per-write cost, small enough that a lone message goes out at once
    /// (the writer never waits to fill a batch).
    pub write_batch_bytes: usize,
    /// Messages buffered per application between the streams and the application's
    /// receiver (which takes up to 64 of them at a time out of the queue, room for as many
    /// new ones). When full, the streams of that application stop reading and QUIC flow
    /// control pushes back on the senders of that application only. Default 1024.
    pub app_receiver_capacity: usize,
    /// First delay before redialling a peer that should be connected. Default 100 ms,
    /// doubled after each failure up to `reconnect_max_backoff`.
    pub reconnect_initial_backoff: Duration,
    /// Longest delay between redials. Default 5 s.
    pub reconnect_max_backoff: Duration,
    /// How long a handshake, dialled or accepted, may take before the connection is
    /// given up (reported as [`RejectReason::Timeout`](crate::RejectReason::Timeout)).
    /// quinn bounds a handshake only by `max_idle_timeout`, and an accepted connection
    /// whose handshake never completes (a replayed 0-RTT flight) holds its early streams
    /// until it ends. Default 10 s.
    pub handshake_timeout: Duration,
    /// How long an accepted stream may take to deliver its `StreamInit` frame. Default 10 s.
    pub stream_init_timeout: Duration,
    /// How long the side that accepted a duplicate connection waits for its dialler to close
    /// it before closing it itself. Default 10 s.
    pub duplicate_linger: Duration,
    /// Events buffered for slow subscribers before they see a lag. Default 1024.
    pub event_capacity: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind_addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, DEFAULT_PORT)),
            alpn: DEFAULT_ALPN.to_vec(),
            udp_send_buffer: 4 * 1024 * 1024,
            udp_recv_buffer: 4 * 1024 * 1024,
            max_idle_timeout: Duration::from_secs(30),
            keep_alive_interval: Duration::from_secs(10),
            max_concurrent_bidi_streams: 1000,
            stream_receive_window: 1024 * 1024,
            receive_window: 64 * 1024 * 1024,
            send_window: 16 * 1024 * 1024,
            congestion: Congestion::default(),
            max_ack_delay: Duration::from_millis(1),
            limits: Limits::default(),
            send_queue_len: 1024,
            write_batch_bytes: 64 * 1024,
            app_receiver_capacity: 1024,
            reconnect_initial_backoff: Duration::from_millis(100),
            reconnect_max_backoff: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            stream_init_timeout: Duration::from_secs(10),
            duplicate_linger: Duration::from_secs(10),
            event_capacity: 1024,
        }
    }
}

impl Config {
    /// Defaults, bound to `127.0.0.1` on an ephemeral port: for tests and one machine.
    pub fn development() -> Self {
        Self {
            bind_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            ..Self::default()
        }
    }

    /// Checks cross-field rules; returns every problem found.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.keep_alive_interval >= self.max_idle_timeout {
            problems.push("keep_alive_interval must be below max_idle_timeout".to_owned());
        }
        if self.handshake_timeout.is_zero() {
            problems.push("handshake_timeout must be above zero".to_owned());
        }
        if !(MIN_ACK_DELAY..=MAX_ACK_DELAY).contains(&self.max_ack_delay) {
            problems.push("max_ack_delay must be 1 ms to 16383 ms".to_owned());
        }
        if self.alpn.is_empty() || self.alpn.len() > 255 {
            problems.push("alpn must be 1 to 255 bytes".to_owned());
        }
        if self.send_queue_len == 0 {
            problems.push("send_queue_len must be at least 1".to_owned());
        }
        if self.app_receiver_capacity == 0 {
            problems.push("app_receiver_capacity must be at least 1".to_owned());
        }
        if self.event_capacity == 0 {
            problems.push("event_capacity must be at least 1".to_owned());
        }
        if self.max_concurrent_bidi_streams == 0 {
            problems.push("max_concurrent_bidi_streams must be at least 1".to_owned());
        }
        if u64::from(self.receive_window) < u64::from(self.stream_receive_window) {
            problems.push("receive_window must be at least stream_receive_window".to_owned());
        }
        if self.reconnect_initial_backoff.is_zero()
            || self.reconnect_initial_backoff > self.reconnect_max_backoff
        {
            problems.push(
                "reconnect_initial_backoff must be non-zero and at most reconnect_max_backoff"
                    .to_owned(),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// The quinn transport parameters this configuration describes.
    pub(crate) fn transport(&self) -> Arc<quinn::TransportConfig> {
        let mut t = quinn::TransportConfig::default();
        t.max_idle_timeout(quinn::IdleTimeout::try_from(self.max_idle_timeout).ok())
            .keep_alive_interval(Some(self.keep_alive_interval))
            .max_concurrent_bidi_streams(quinn::VarInt::from_u32(self.max_concurrent_bidi_streams))
            .max_concurrent_uni_streams(quinn::VarInt::from_u32(0))
            .stream_receive_window(quinn::VarInt::from_u32(self.stream_receive_window))
            .receive_window(quinn::VarInt::from_u32(self.receive_window))
            .send_window(self.send_window);
        // Only the delay differs from quinn's defaults: any packet received out of order
        // is still acknowledged at once (`reordering_threshold` 1, QUIC's behaviour without
        // the extension), so the sender's loss detection is not slowed down.
        let mut ack = quinn::AckFrequencyConfig::default();
        ack.max_ack_delay(Some(self.max_ack_delay))
            .reordering_threshold(quinn::VarInt::from_u32(1));
        t.ack_frequency_config(Some(ack));
        match self.congestion {
            Congestion::Cubic => {
                t.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()))
            }
            Congestion::Bbr => {
                t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()))
            }
        };
        Arc::new(t)
    }
}

/// The congestion controller a connection paces its sending with.
///
/// Both sides choose their own: a node's controller governs what it sends, whatever its
/// peer runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "lowercase")
)]
#[non_exhaustive]
pub enum Congestion {
    /// CUBIC (RFC 9438), quinn's default and TCP's usual one: it reads every loss as
    /// congestion and halves back (to 70 %) on it. The right choice inside a data centre,
    /// where loss means a full queue.
    #[default]
    Cubic,
    /// BBR, quinn's implementation (which quinn calls experimental): it paces at the
    /// bottleneck bandwidth it measures and ignores isolated losses, so a link that drops
    /// packets at random (a lossy WAN or radio path) keeps its throughput. Across two
    /// network namespaces dropping 1 % of packets it moved about 3x what CUBIC did, at
    /// 5 % about 9x, and on the clean link about 0.9x (the `packet_loss` section of the
    /// transport benchmark measures both). It competes unfairly with loss-based flows on a
    /// shared bottleneck; choose it for links that lose packets without congestion. Its
    /// rate estimate can also get stuck: in this crate's tests a connection under BBR once
    /// stopped delivering a 4 MiB burst for over 30 s on a busy 2-core machine, which is
    /// why it is not the default.
    Bbr,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_seed() {
        let c = Config::default();
        assert!(c.validate().is_ok());
        assert_eq!(c.bind_addr.port(), 6970);
        assert_eq!(c.alpn, b"mycorrizal-quic");
        assert_eq!(c.max_idle_timeout, Duration::from_secs(30));
        assert_eq!(c.keep_alive_interval, Duration::from_secs(10));
        assert_eq!(c.max_concurrent_bidi_streams, 1000);
        assert_eq!(c.congestion, Congestion::Cubic);
        assert_eq!(c.max_ack_delay, Duration::from_millis(1));
        assert!(Config::development().validate().is_ok());
    }

    #[test]
    fn max_ack_delay_is_checked_against_what_quic_can_carry() {
        let with = |d| Config {
            max_ack_delay: d,
            ..Config::default()
        };
        for ok in [1, 25, 16_383] {
            assert!(
                with(Duration::from_millis(ok)).validate().is_ok(),
                "{ok} ms"
            );
        }
        for bad in [
            Duration::ZERO,
            Duration::from_micros(999),
            Duration::from_millis(16_384),
        ] {
            let problems = with(bad).validate().unwrap_err();
            assert!(
                problems[0].contains("max_ack_delay"),
                "{bad:?}: {problems:?}"
            );
        }
    }

    #[test]
    fn validate_reports_every_problem() {
        let c = Config {
            keep_alive_interval: Duration::from_secs(60),
            alpn: Vec::new(),
            send_queue_len: 0,
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().len(), 3);
    }
}
