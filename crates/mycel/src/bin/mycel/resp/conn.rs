//! One client connection: read, parse every complete request in the buffer, execute them
//! in order, encode every reply into one reused output buffer, write it once.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::apply::{self, After, Session};
use super::cmd::Command;
use super::frame::Frame;
use super::parse::RequestParser;
use crate::metrics::CommandLabel;
use crate::state::Shared;

/// Bytes kept free in the input buffer before each read, so reads are large.
const READ_CHUNK: usize = 16 * 1024;

/// Serves `stream` until the client leaves, breaks the protocol, or `shutdown` turns
/// true (then the batch being executed is answered first).
pub(crate) async fn serve(
    mut stream: TcpStream,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Replies are written once per batch; waiting for more would only add latency.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let mut session = Session::new(&shared);
    let mut parser = RequestParser::new(shared.limits);
    let mut input = BytesMut::with_capacity(READ_CHUNK);
    let mut output = BytesMut::with_capacity(READ_CHUNK);
    let mut args = Vec::new();
    loop {
        if input.capacity() - input.len() < READ_CHUNK / 4 {
            input.reserve(READ_CHUNK);
        }
        let read = tokio::select! {
            r = stream.read_buf(&mut input) => r,
            _ = shutdown.changed() => break,
        };
        match read {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(client = session.id, error = %e, "read failed");
                break;
            }
        }
        let mut close = false;
        loop {
            match parser.parse(&mut input, &mut args) {
                Ok(false) => break,
                Ok(true) if args.is_empty() => {}
                Ok(true) => {
                    let (frame, after) = match Command::parse(&args) {
                        Ok(cmd) => {
                            let label = CommandLabel {
                                command: apply::name(&cmd),
                            };
                            shared.metrics.commands.get_or_create(&label).inc();
                            let (frame, after) = apply::execute(cmd, &mut session, &shared).await;
                            if matches!(frame, Frame::Error(_)) {
                                shared.metrics.errors.get_or_create(&label).inc();
                            }
                            (frame, after)
                        }
                        Err(frame) => {
                            let label = CommandLabel { command: "unknown" };
                            shared.metrics.errors.get_or_create(&label).inc();
                            (frame, After::Continue)
                        }
                    };
                    frame.encode(session.proto, &mut output);
                    if after == After::Close {
                        close = true;
                        break;
                    }
                }
                Err(e) => {
                    tracing::debug!(client = session.id, error = %e, "protocol error; closing");
                    shared.metrics.protocol_errors.inc();
                    Frame::err(&e).encode(session.proto, &mut output);
                    close = true;
                    break;
                }
            }
        }
        // The arguments share the input's allocation; drop them so it can be reused.
        args.clear();
        if !output.is_empty() {
            if let Err(e) = stream.write_all(&output).await {
                tracing::debug!(client = session.id, error = %e, "write failed");
                break;
            }
            output.clear();
        }
        if close {
            break;
        }
    }
    if let Err(e) = stream.shutdown().await {
        tracing::trace!(client = session.id, error = %e, "shutdown after close");
    }
}
