//! The raw quinn baseline: mutual TLS, ALPN `mycorrizal-quic`, 4 MiB UDP socket buffers,
//! one bidirectional stream per application and no stream manager.
//!
//! The server accepts 0-RTT and answers in 0.5-RTT (`into_0rtt` on both sides) so that
//! the 0-RTT figure is "connect to first echoed message" with the request carried in
//! early data. That is fine for an echo benchmark and wrong for a product: early data can
//! be replayed and 0.5-RTT answers go out before the client certificate was checked.
//! Nodosum's stream manager sends 0-RTT data only for applications registered as
//! replay-safe, and answers only once the handshake completed (see `nodosum_quic`'s crate
//! documentation).

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{
    Endpoint, EndpointConfig, RecvStream, SendStream, TokioRuntime, TransportConfig, VarInt,
};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::BufReader;
use tokio::task::JoinHandle;

use crate::pki::{self, Pki, Resume};
use crate::{
    DATA_APP, ECHO_APP, IO_CHUNK, ServerMode, put_app, put_message, read_app, read_message,
};

/// UDP socket send and receive buffer: with the kernel's default 208 KiB quinn drops
/// packets even on loopback (see DESIGN.md).
pub const UDP_BUFFER: usize = 4 * 1024 * 1024;

/// A UDP socket on an ephemeral loopback port with [`UDP_BUFFER`] buffers.
pub fn udp_socket() -> io::Result<UdpSocket> {
    udp_socket_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// A UDP socket on an ephemeral port of `ip` (IPv4) with [`UDP_BUFFER`] buffers.
pub fn udp_socket_on(ip: IpAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(SocketAddr::new(ip, 0)),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    socket.set_send_buffer_size(UDP_BUFFER)?;
    socket.set_recv_buffer_size(UDP_BUFFER)?;
    socket.bind(&SocketAddr::new(ip, 0).into())?;
    Ok(socket.into())
}

/// Flow-control windows and acknowledgement delay as in `nodosum_quic::Config::default()`
/// (1 MiB per stream, 64 MiB per connection received, 16 MiB sent; no unidirectional
/// streams; acknowledgements within 1 ms), so that the raw baseline and the stream manager
/// differ only in the stream manager.
pub fn transport() -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.stream_receive_window(VarInt::from_u32(1024 * 1024))
        .receive_window(VarInt::from_u32(64 * 1024 * 1024))
        .send_window(16 * 1024 * 1024)
        .max_concurrent_bidi_streams(VarInt::from_u32(1000))
        .max_concurrent_uni_streams(VarInt::from_u32(0));
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.max_ack_delay(Some(nodosum_quic::Config::default().max_ack_delay))
        .reordering_threshold(VarInt::from_u32(1));
    t.ack_frequency_config(Some(ack));
    Arc::new(t)
}

/// quinn's client configuration from [`Pki::client_config`].
pub fn client_config(pki: &Pki, resume: Resume) -> anyhow::Result<quinn::ClientConfig> {
    let crypto = QuicClientConfig::try_from(Arc::new(pki.client_config(resume)?))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport());
    Ok(config)
}

/// A client endpoint (no server role) on a tuned loopback socket.
pub fn client_endpoint() -> anyhow::Result<Endpoint> {
    client_endpoint_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// A client endpoint on a tuned socket bound to `ip`.
pub fn client_endpoint_on(ip: IpAddr) -> anyhow::Result<Endpoint> {
    Ok(Endpoint::new(
        EndpointConfig::default(),
        None,
        udp_socket_on(ip)?,
        Arc::new(TokioRuntime),
    )?)
}

/// A raw quinn server; stops when dropped.
#[derive(Debug)]
pub struct QuicServer {
    endpoint: Endpoint,
    task: JoinHandle<()>,
}

impl QuicServer {
    /// Binds a tuned loopback socket and serves every stream in `mode`; accepts 0-RTT.
    pub fn start(pki: &Pki, mode: ServerMode) -> anyhow::Result<Self> {
        Self::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST), pki, mode)
    }

    /// Like [`start`](Self::start), on an ephemeral port of `ip`.
    pub fn start_on(ip: IpAddr, pki: &Pki, mode: ServerMode) -> anyhow::Result<Self> {
        let crypto = QuicServerConfig::try_from(Arc::new(pki.server_config(true)?))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(transport());
        let endpoint = Endpoint::new(
            EndpointConfig::default(),
            Some(config),
            udp_socket_on(ip)?,
            Arc::new(TokioRuntime),
        )?;
        let accepting = endpoint.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Some(incoming) = accepting.accept().await {
                let mode = mode.clone();
                conns.spawn(async move {
                    let _ = serve_connection(incoming, mode).await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(Self { endpoint, task })
    }

    /// The bound address.
    pub fn addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.endpoint.local_addr()?)
    }
}

impl Drop for QuicServer {
    fn drop(&mut self) {
        self.endpoint.close(0u32.into(), b"bench over");
        self.task.abort();
    }
}

async fn serve_connection(incoming: quinn::Incoming, mode: ServerMode) -> anyhow::Result<()> {
    let connecting = incoming.accept()?;
    // Servers always get Ok here: 0.5-RTT, so 0-RTT requests are answered at once.
    let conn = match connecting.into_0rtt() {
        Ok((conn, _)) => conn,
        Err(connecting) => connecting.await?,
    };
    let mut streams = tokio::task::JoinSet::new();
    while let Ok((send, recv)) = conn.accept_bi().await {
        let mode = mode.clone();
        streams.spawn(async move {
            let _ = serve_stream(send, recv, mode).await;
        });
        while streams.try_join_next().is_some() {}
    }
    // Let the streams finish reading what was already received.
    while streams.join_next().await.is_some() {}
    Ok(())
}

async fn serve_stream(mut send: SendStream, recv: RecvStream, mode: ServerMode) -> io::Result<()> {
    let mut recv = BufReader::with_capacity(IO_CHUNK, recv);
    let (mut app, mut payload, mut out) = (Vec::new(), Vec::new(), Vec::new());
    read_app(&mut recv, &mut app).await?;
    let mut count = 0u64;
    loop {
        match read_message(&mut recv, &mut payload).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        match &mode {
            ServerMode::EchoData if app == ECHO_APP => {
                out.clear();
                put_message(&mut out, &payload);
                send.write_all(&out).await?;
            }
            ServerMode::EchoData if payload.is_empty() => {
                out.clear();
                put_message(&mut out, &count.to_le_bytes());
                send.write_all(&out).await?;
            }
            ServerMode::EchoData => count += 1,
            // Waiting here stops only this stream: its flow-control window fills up and
            // the peer's writes on it block; other streams are unaffected.
            ServerMode::Apps(router) => {
                router.deliver(&app, Bytes::copy_from_slice(&payload)).await;
            }
        }
    }
}

/// One application stream of a raw quinn connection.
#[derive(Debug)]
pub struct AppStream {
    send: SendStream,
    recv: BufReader<RecvStream>,
}

impl AppStream {
    /// Opens a bidirectional stream for `app` (the header is sent with the first write).
    pub async fn open(conn: &quinn::Connection, app: &[u8]) -> anyhow::Result<Self> {
        let (mut send, recv) = conn.open_bi().await?;
        let mut header = Vec::new();
        put_app(&mut header, app);
        send.write_all(&header).await?;
        Ok(Self {
            send,
            recv: BufReader::with_capacity(IO_CHUNK, recv),
        })
    }

    /// The sending half.
    pub fn send(&mut self) -> &mut SendStream {
        &mut self.send
    }
}

/// An established raw quinn connection with an echo and a data stream.
#[derive(Debug)]
pub struct QuicLink {
    conn: quinn::Connection,
    echo: AppStream,
    data: AppStream,
    buf: Vec<u8>,
    out: Vec<u8>,
}

impl QuicLink {
    /// Connects (full or resumed handshake, as `config` allows) and opens both streams.
    pub async fn connect(
        endpoint: &Endpoint,
        config: quinn::ClientConfig,
        addr: SocketAddr,
    ) -> anyhow::Result<Self> {
        let conn = endpoint
            .connect_with(config, addr, pki::SERVER_NAME)?
            .await
            .context("QUIC handshake")?;
        Ok(Self {
            echo: AppStream::open(&conn, ECHO_APP).await?,
            data: AppStream::open(&conn, DATA_APP).await?,
            conn,
            buf: Vec::new(),
            out: Vec::with_capacity(IO_CHUNK + 1024),
        })
    }

    /// Sends `payload` on the echo stream and waits until it comes back.
    pub async fn ping(&mut self, payload: &[u8]) -> anyhow::Result<()> {
        ping(&mut self.echo, &mut self.out, &mut self.buf, payload).await?;
        ensure!(self.buf == payload, "bad echo");
        Ok(())
    }

    /// Sends `count` copies of `payload` on the data stream in 64 KiB writes, then waits
    /// for the acknowledgement that the server read them all.
    pub async fn push(&mut self, payload: &[u8], count: u64) -> anyhow::Result<()> {
        self.out.clear();
        for _ in 0..count {
            put_message(&mut self.out, payload);
            if self.out.len() >= IO_CHUNK {
                self.data.send.write_all(&self.out).await?;
                self.out.clear();
            }
        }
        put_message(&mut self.out, &[]);
        self.data.send.write_all(&self.out).await?;
        read_message(&mut self.data.recv, &mut self.buf).await?;
        ensure!(self.buf.len() == 8, "bad acknowledgement");
        Ok(())
    }

    /// Closes the connection.
    pub fn close(self) {
        self.conn.close(0u32.into(), b"done");
    }
}

async fn ping(
    stream: &mut AppStream,
    out: &mut Vec<u8>,
    buf: &mut Vec<u8>,
    payload: &[u8],
) -> anyhow::Result<()> {
    out.clear();
    put_message(out, payload);
    stream.send.write_all(out).await?;
    read_message(&mut stream.recv, buf).await?;
    Ok(())
}

/// How a setup measurement's handshake went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// A 1-RTT handshake (full or resumed).
    OneRtt,
    /// The request went out as 0-RTT data and the server accepted it.
    ZeroRttAccepted,
    /// 0-RTT was attempted, the server refused it, the request was resent after the handshake.
    ZeroRttRejected,
}

/// Connects, sends one `payload` to the echo application and waits for it to come back:
/// the connection set-up figure, returned with how the handshake went. With `zero_rtt` the
/// request is written as early data when the client holds a ticket.
///
/// Untimed afterwards: one more echo in 1-RTT data, so that the server's session tickets
/// (sent once the handshake completes, after the 0.5-RTT answer) reach the client before
/// the connection closes; otherwise a client that reconnects in a loop runs out of
/// tickets and falls back to full handshakes.
pub async fn connect_and_echo(
    endpoint: &Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
    payload: &[u8],
    zero_rtt: bool,
) -> anyhow::Result<(Setup, Duration)> {
    let start = Instant::now();
    let connecting = endpoint.connect_with(config, addr, pki::SERVER_NAME)?;
    let (mut out, mut buf) = (Vec::new(), Vec::new());
    let (conn, setup) = if zero_rtt {
        match connecting.into_0rtt() {
            Ok((conn, accepted)) => {
                let early = async {
                    let mut stream = AppStream::open(&conn, ECHO_APP).await?;
                    ping(&mut stream, &mut out, &mut buf, payload).await
                };
                match early.await {
                    Ok(()) => (conn, Setup::ZeroRttAccepted),
                    Err(e) => {
                        ensure!(!accepted.await, "0-RTT echo failed: {e:#}");
                        let mut stream = AppStream::open(&conn, ECHO_APP).await?;
                        ping(&mut stream, &mut out, &mut buf, payload).await?;
                        (conn, Setup::ZeroRttRejected)
                    }
                }
            }
            Err(connecting) => {
                let conn = connecting.await?;
                let mut stream = AppStream::open(&conn, ECHO_APP).await?;
                ping(&mut stream, &mut out, &mut buf, payload).await?;
                (conn, Setup::OneRtt)
            }
        }
    } else {
        let conn = connecting.await?;
        let mut stream = AppStream::open(&conn, ECHO_APP).await?;
        ping(&mut stream, &mut out, &mut buf, payload).await?;
        (conn, Setup::OneRtt)
    };
    let elapsed = start.elapsed();
    ensure!(buf == payload, "bad echo");
    let mut stream = AppStream::open(&conn, ECHO_APP).await?;
    ping(&mut stream, &mut out, &mut buf, payload).await?;
    conn.close(0u32.into(), b"done");
    Ok((setup, elapsed))
}
