//! Shared fixtures of the cross-crate benchmarks: the transports Nodosum is measured against.
//!
//! - [`pki`]: an rcgen CA with two node certificates, and the rustls (ring, TLS 1.3, mutual
//!   TLS) configurations every transport here uses.
//! - [`tcp`]: the **TCP + TLS 1.3 baseline** (tokio-rustls), multiplexing every application
//!   over one connection the way the seed's old transport did: each frame carries its
//!   application ID, `[u16 LE app-id len][app id][u32 LE len][payload]` (the seed's
//!   "Glutamate" header minus version/type/flag bytes), one reader routes frames to bounded
//!   per-application queues (the seed used 100-item channels).
//! - [`quic`]: a **raw quinn** pair with the same certificates and ALPN, 4 MiB UDP socket
//!   buffers, one bidirectional stream per application (`[u16 LE app-id len][app id]` once,
//!   then `[u32 LE len][payload]` messages), and no stream manager.
//! - [`nodosum`]: Nodosum's stream manager (`nodosum_quic::QuicNode`) doing the same
//!   exchanges through its public API.
//! - [`stall`]: the multi-application scenario on both: N applications on one connection,
//!   one application's receiver stalled, messages delivered to the others in a window.
//! - [`loss`] and [`netns`]: the same multi-application traffic across a lossy veth link
//!   between two network namespaces (iptables random drop), endpoints in child processes
//!   inside the namespaces; root only.
//! - [`memory`]: resident memory per idle connection, serving side in a child process.
//!
//! Each link speaks the same two exchanges: *ping* (one message to the `echo`
//! application, wait for it to come back) and *push* (`count` messages to the `data`
//! application, then an empty message that asks for an acknowledgement once all were
//! read). Everything but the packet-loss scenario runs on loopback (127.0.0.1) in a multi-thread tokio runtime; the
//! caller keeps the busy tasks off its `block_on` thread (see [`runtime`]).
//!
//! What it is not: a test suite (benchmarks measure, tests in each crate assert), or a
//! load tool for remote hosts (loopback only).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod loss;
pub mod memory;
pub mod netns;
pub mod nodosum;
pub mod pki;
pub mod quic;
pub mod stall;
pub mod stats;
pub mod tcp;

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The application that echoes every message back.
pub const ECHO_APP: &[u8] = b"echo";

/// The application that counts messages and acknowledges on an empty message.
pub const DATA_APP: &[u8] = b"data";

/// Largest message the servers accept; a larger length prefix ends the connection.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Longest application ID the servers accept.
pub const MAX_APP_ID: usize = 255;

/// Size of the coalesced writes and read buffers on both transports.
pub const IO_CHUNK: usize = 64 * 1024;

/// The runtime every benchmark uses: multi-thread with two workers (the machine has two
/// cores), so that spawned I/O tasks run off the `block_on` thread.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// Appends one message frame `[u32 LE len][payload]`.
pub fn put_message(buf: &mut Vec<u8>, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("invariant: benchmark messages are < 4 GiB");
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// Appends an application header `[u16 LE len][app id]`.
pub fn put_app(buf: &mut Vec<u8>, app: &[u8]) {
    let len = u16::try_from(app.len()).expect("invariant: benchmark app IDs are < 64 KiB");
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(app);
}

/// Reads an application header written by [`put_app`] into `app` (resized), refusing IDs
/// over [`MAX_APP_ID`].
pub async fn read_app(r: &mut (impl AsyncRead + Unpin), app: &mut Vec<u8>) -> std::io::Result<()> {
    let len = usize::from(r.read_u16_le().await?);
    if len > MAX_APP_ID {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("app ID of {len} bytes"),
        ));
    }
    app.resize(len, 0);
    r.read_exact(app).await?;
    Ok(())
}

/// Reads a message written by [`put_message`] into `buf` (resized), refusing lengths over
/// [`MAX_MESSAGE`] before allocating.
pub async fn read_message(
    r: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
) -> std::io::Result<()> {
    let len = usize::try_from(r.read_u32_le().await?).unwrap_or(usize::MAX);
    if len > MAX_MESSAGE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("message of {len} bytes"),
        ));
    }
    buf.resize(len, 0);
    r.read_exact(buf).await?;
    Ok(())
}

/// What a server does with the messages it reads.
#[derive(Debug, Clone)]
pub enum ServerMode {
    /// [`ECHO_APP`] messages are echoed, [`DATA_APP`] messages counted and acknowledged.
    EchoData,
    /// Messages go to the per-application queues of a [`stall::Router`].
    Apps(std::sync::Arc<stall::Router>),
}

/// A generous guard for one exchange: a benchmark that hangs is a bug, not a figure.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);
