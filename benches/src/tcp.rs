//! The TCP + TLS 1.3 baseline: one mutual-TLS connection multiplexing every application with
//! `[u16 LE app-id len][app id][u32 LE len][payload]` frames.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::{Context, ensure};
use bytes::Bytes;
use rustls::{ClientConfig, HandshakeKind, ServerConfig};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

use crate::{
    DATA_APP, ECHO_APP, IO_CHUNK, ServerMode, pki, put_app, put_message, read_app, read_message,
};

/// A TCP + TLS server on 127.0.0.1; stops when dropped.
#[derive(Debug)]
pub struct TcpServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TcpServer {
    /// Listens on an ephemeral loopback port and serves every connection in `mode`.
    pub async fn start(config: ServerConfig, mode: ServerMode) -> anyhow::Result<Self> {
        Self::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST), config, mode).await
    }

    /// Like [`start`](Self::start), on an ephemeral port of `ip`.
    pub async fn start_on(
        ip: IpAddr,
        config: ServerConfig,
        mode: ServerMode,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).await?;
        let addr = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let mode = mode.clone();
                conns.spawn(async move {
                    // A refused or broken connection ends only itself.
                    let _ = serve(acceptor, tcp, mode).await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(Self { addr, task })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(acceptor: TlsAcceptor, tcp: TcpStream, mode: ServerMode) -> io::Result<()> {
    tcp.set_nodelay(true)?;
    let tls: server::TlsStream<TcpStream> = acceptor.accept(tcp).await?;
    // BufReader passes writes through to the stream.
    let mut stream = BufReader::with_capacity(IO_CHUNK, tls);
    let (mut app, mut payload, mut out) = (Vec::new(), Vec::new(), Vec::new());
    let mut count = 0u64;
    loop {
        match read_app(&mut stream, &mut app).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        read_message(&mut stream, &mut payload).await?;
        match &mode {
            ServerMode::EchoData if app == ECHO_APP => {
                out.clear();
                put_app(&mut out, ECHO_APP);
                put_message(&mut out, &payload);
                stream.write_all(&out).await?;
                stream.flush().await?;
            }
            ServerMode::EchoData if payload.is_empty() => {
                out.clear();
                put_app(&mut out, DATA_APP);
                put_message(&mut out, &count.to_le_bytes());
                stream.write_all(&out).await?;
                stream.flush().await?;
            }
            ServerMode::EchoData => count += 1,
            // The seed's reader: route to the application's bounded queue, waiting while it
            // is full. One stalled application therefore stops this whole connection.
            ServerMode::Apps(router) => {
                router.deliver(&app, Bytes::copy_from_slice(&payload)).await;
            }
        }
    }
}

/// Opens a TCP connection and completes the TLS handshake as [`pki::CLIENT_NAME`].
pub async fn dial(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> anyhow::Result<client::TlsStream<TcpStream>> {
    dial_with(addr, config, None).await
}

/// Like [`dial`], with the connection's congestion controller set to `congestion` (e.g.
/// `b"cubic"`, quinn's default) instead of the system's default.
pub async fn dial_with(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    congestion: Option<&[u8]>,
) -> anyhow::Result<client::TlsStream<TcpStream>> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(cc) = congestion {
        socket2::SockRef::from(&socket)
            .set_tcp_congestion(cc)
            .context("setting the congestion controller")?;
    }
    let tcp = socket.connect(addr).await?;
    tcp.set_nodelay(true)?;
    let tls = TlsConnector::from(config)
        .connect(pki::server_name()?, tcp)
        .await
        .context("TLS handshake")?;
    Ok(tls)
}

/// An established client connection speaking ping and push.
#[derive(Debug)]
pub struct TcpLink {
    stream: BufReader<client::TlsStream<TcpStream>>,
    app: Vec<u8>,
    buf: Vec<u8>,
    out: Vec<u8>,
}

impl TcpLink {
    /// Connects and reports how the handshake went (full or resumed).
    pub async fn connect(
        addr: SocketAddr,
        config: Arc<ClientConfig>,
    ) -> anyhow::Result<(Self, Option<HandshakeKind>)> {
        let tls = dial(addr, config).await?;
        let kind = tls.get_ref().1.handshake_kind();
        let link = Self {
            stream: BufReader::with_capacity(IO_CHUNK, tls),
            app: Vec::new(),
            buf: Vec::new(),
            out: Vec::with_capacity(IO_CHUNK + 1024),
        };
        Ok((link, kind))
    }

    /// Sends `payload` to the echo application and waits until it comes back.
    pub async fn ping(&mut self, payload: &[u8]) -> anyhow::Result<()> {
        self.out.clear();
        put_app(&mut self.out, ECHO_APP);
        put_message(&mut self.out, payload);
        self.stream.write_all(&self.out).await?;
        self.stream.flush().await?;
        read_app(&mut self.stream, &mut self.app).await?;
        read_message(&mut self.stream, &mut self.buf).await?;
        ensure!(self.app == ECHO_APP && self.buf == payload, "bad echo");
        Ok(())
    }

    /// Sends `count` copies of `payload` to the data application in 64 KiB writes, then
    /// waits for the acknowledgement that the server read them all.
    pub async fn push(&mut self, payload: &[u8], count: u64) -> anyhow::Result<()> {
        self.out.clear();
        for _ in 0..count {
            put_app(&mut self.out, DATA_APP);
            put_message(&mut self.out, payload);
            if self.out.len() >= IO_CHUNK {
                self.stream.write_all(&self.out).await?;
                self.out.clear();
            }
        }
        put_app(&mut self.out, DATA_APP);
        put_message(&mut self.out, &[]);
        self.stream.write_all(&self.out).await?;
        self.stream.flush().await?;
        read_app(&mut self.stream, &mut self.app).await?;
        read_message(&mut self.stream, &mut self.buf).await?;
        ensure!(
            self.app == DATA_APP && self.buf.len() == 8,
            "bad acknowledgement"
        );
        Ok(())
    }

    /// Shuts the connection down (TLS close_notify, then FIN).
    pub async fn close(mut self) {
        let _ = self.stream.shutdown().await;
    }
}
