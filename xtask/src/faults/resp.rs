//! A minimal RESP client for the orchestrator's probes: "does this node serve every key?"

use std::io::{BufRead, BufReader, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, bail};

/// A RESP reply, as far as the probes care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
}

/// A command as a RESP array of bulk strings.
pub(crate) fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one reply (no arrays: the probes send GET and SET only).
pub(crate) fn read_reply(r: &mut impl BufRead) -> anyhow::Result<Reply> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        bail!("connection closed");
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let (tag, rest) = line.split_at_checked(1).context("empty reply line")?;
    Ok(match tag {
        "+" => Reply::Simple(rest.to_owned()),
        "-" => Reply::Error(rest.to_owned()),
        ":" => Reply::Integer(rest.parse().context("bad integer reply")?),
        "$" => {
            let len: i64 = rest.parse().context("bad bulk length")?;
            if len < 0 {
                Reply::Bulk(None)
            } else {
                let len = usize::try_from(len).context("bulk length")?;
                if len > 1 << 20 {
                    bail!("bulk reply of {len} bytes is not a probe's");
                }
                let mut buf = vec![0; len + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(len);
                Reply::Bulk(Some(buf))
            }
        }
        other => bail!("unexpected reply type {other:?}"),
    })
}

/// Sends every command at once (pipelined) and returns the replies in order.
pub(crate) fn pipeline(
    addr: SocketAddr,
    commands: &[Vec<Vec<u8>>],
    timeout: Duration,
) -> anyhow::Result<Vec<Reply>> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    let mut out = Vec::new();
    for c in commands {
        let args: Vec<&[u8]> = c.iter().map(Vec::as_slice).collect();
        out.extend_from_slice(&encode(&args));
    }
    (&stream).write_all(&out)?;
    let mut reader = BufReader::new(&stream);
    commands.iter().map(|_| read_reply(&mut reader)).collect()
}

/// The probe commands for `keys` keys through node `node`: a GET of every load key
/// (`fx:K`) and a SET of a probe key per load key (`fx-probe:K`; distinct keys, spread
/// over the partitions like the load's).
pub(crate) fn probe_commands(node: u8, keys: u32) -> Vec<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for k in 0..keys {
        out.push(vec![b"GET".to_vec(), format!("fx:{k}").into_bytes()]);
        out.push(vec![
            b"SET".to_vec(),
            format!("fx-probe:{k}").into_bytes(),
            format!("n{node}").into_bytes(),
        ]);
    }
    out
}

/// Whether the replies to [`probe_commands`] show every key served: every GET answered
/// with a value or nil, every SET acknowledged. On failure, the first bad reply.
pub(crate) fn all_served(replies: &[Reply]) -> Result<(), String> {
    for r in replies {
        match r {
            Reply::Bulk(_) => {}
            Reply::Simple(s) if s == "OK" => {}
            other => return Err(format!("{other:?}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_reads_replies() {
        assert_eq!(encode(&[b"GET", b"k"]), b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
        let mut r: &[u8] = b"+OK\r\n-TRYAGAIN later\r\n:5\r\n$-1\r\n$3\r\na\r\n\r\n";
        assert_eq!(read_reply(&mut r).unwrap(), Reply::Simple("OK".into()));
        assert_eq!(
            read_reply(&mut r).unwrap(),
            Reply::Error("TRYAGAIN later".into())
        );
        assert_eq!(read_reply(&mut r).unwrap(), Reply::Integer(5));
        assert_eq!(read_reply(&mut r).unwrap(), Reply::Bulk(None));
        assert_eq!(
            read_reply(&mut r).unwrap(),
            Reply::Bulk(Some(b"a\r\n".to_vec()))
        );
        assert!(read_reply(&mut r).is_err());
        let mut bad: &[u8] = b"*1\r\n";
        assert!(read_reply(&mut bad).is_err());
        let mut huge: &[u8] = b"$99999999\r\n";
        assert!(read_reply(&mut huge).is_err());
    }

    #[test]
    fn probes_cover_every_key() {
        let c = probe_commands(2, 3);
        assert_eq!(c.len(), 6);
        assert_eq!(c[0], [b"GET".to_vec(), b"fx:0".to_vec()]);
        assert_eq!(
            c[5],
            [b"SET".to_vec(), b"fx-probe:2".to_vec(), b"n2".to_vec()]
        );
        let ok = [Reply::Bulk(None), Reply::Simple("OK".into())];
        assert!(all_served(&ok).is_ok());
        let refused = [
            Reply::Bulk(None),
            Reply::Error("CLUSTERDOWN quorum lost".into()),
        ];
        assert!(all_served(&refused).unwrap_err().contains("CLUSTERDOWN"));
    }
}
