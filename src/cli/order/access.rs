//! `order logs` and `order connect`: the buyer's side of the relay (`relay.proto`, DESIGN §9).
//! Every call carries a fresh token signed with the buyer's key, good for one use.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

use crate::access::Scope;
use crate::wire::MAX_CHUNK_BYTES;
use crate::wire::envelope::seal;
use crate::wire::proto::relay_client::RelayClient;
use crate::wire::proto::{
    AccessTokenBody, Chunk, ConnectRequest, LogOptions, LogsRequest, Signed, chunk,
};

/// How long a token the CLI signs stays valid: long enough to reach the provider.
const TOKEN_SECONDS: i64 = 120;
/// The longest wait between attempts to resume a followed log.
const MAX_RESUME_DELAY: Duration = Duration::from_secs(5);
/// Tries at opening one connection's call while gateways or the provider are away.
const OPEN_ATTEMPTS: u32 = 4;

/// Signs tokens for one lease.
#[derive(Clone)]
pub struct Tokens {
    pub key: SigningKey,
    pub lease_id: String,
}

impl Tokens {
    pub fn sign(&self, scope: Scope, ports: &[u32]) -> Signed {
        let now = jiff::Timestamp::now().as_second();
        let body = AccessTokenBody {
            header: None,
            lease_id: self.lease_id.clone(),
            scopes: vec![scope.name().to_string()],
            ports: ports.to_vec(),
            expires_at: now + TOKEN_SECONDS,
        };
        seal(&self.key, body, now)
    }
}

pub use crate::wire::client::relay_client;

/// The lines of a log as its chunks arrive: each line starts with the time the kubelet
/// stamped it with, which is what a resumed stream starts again from. Lines at or before the
/// last time shown are not shown again.
#[derive(Debug, Default)]
pub struct LogLines {
    partial: Vec<u8>,
    last: Option<jiff::Timestamp>,
    timestamps: bool,
}

impl LogLines {
    pub fn new(timestamps: bool) -> LogLines {
        LogLines {
            timestamps,
            ..LogLines::default()
        }
    }

    /// What to print of `chunk`: its complete lines not shown before, with or without their
    /// times.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.partial.extend_from_slice(chunk);
        let Some(end) = self.partial.iter().rposition(|b| *b == b'\n') else {
            return Vec::new();
        };
        let complete: Vec<u8> = self.partial.drain(..=end).collect();
        let mut shown = Vec::new();
        for line in complete.split_inclusive(|b| *b == b'\n') {
            let (time, text) = split_time(line);
            if let Some(time) = time {
                if self.last.is_some_and(|last| time <= last) {
                    continue;
                }
                self.last = Some(time);
            }
            shown.extend_from_slice(if self.timestamps { line } else { text });
        }
        shown
    }

    /// What is left when the log ends without a final newline.
    pub fn finish(&mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.partial);
        if rest.is_empty() {
            return rest;
        }
        let mut line = self.push(&[rest.as_slice(), b"\n"].concat());
        line.pop();
        line
    }

    /// A stream broke: the line it was in the middle of comes again, whole, on the next one.
    pub fn restart(&mut self) {
        self.partial.clear();
    }

    /// The time to resume from: the last line's, RFC 3339.
    pub fn resume_from(&self) -> Option<String> {
        self.last.map(|t| t.to_string())
    }
}

/// A log line's leading time and the text after it; no time when it does not start with one.
fn split_time(line: &[u8]) -> (Option<jiff::Timestamp>, &[u8]) {
    let Some(space) = line.iter().position(|b| *b == b' ') else {
        return (None, line);
    };
    match std::str::from_utf8(&line[..space])
        .ok()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
    {
        Some(time) => (Some(time), &line[space + 1..]),
        None => (None, line),
    }
}

/// Whether a failed call may work when tried again: the provider or a gateway was away, not a
/// refusal.
fn is_transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Cancelled | Code::Unknown | Code::Aborted
    )
}

/// Prints the lease's log to `out`. With `follow`, a stream that breaks (the operator
/// restarted, a gateway went away) is resumed from the last line's time until the log ends or
/// the provider refuses.
pub async fn logs(
    relay: RelayClient<Channel>,
    tokens: &Tokens,
    options: LogOptions,
    timestamps: bool,
    mut out: impl Write,
) -> Result<(), Status> {
    let mut lines = LogLines::new(timestamps);
    let mut delay = Duration::from_millis(250);
    let write = |out: &mut dyn Write, bytes: &[u8]| {
        out.write_all(bytes)
            .and_then(|()| out.flush())
            .map_err(|e| Status::aborted(format!("writing the log: {e}")))
    };
    loop {
        lines.restart();
        let request = LogsRequest {
            token: Some(tokens.sign(Scope::Logs, &[])),
            options: Some(LogOptions {
                since_time: lines
                    .resume_from()
                    .unwrap_or_else(|| options.since_time.clone()),
                ..options.clone()
            }),
        };
        let broke = match relay.clone().logs(request).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(Chunk {
                            kind: Some(chunk::Kind::Data(data)),
                        })) => {
                            write(&mut out, &lines.push(&data))?;
                            delay = Duration::from_millis(250);
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => return write(&mut out, &lines.finish()),
                        Err(status) => break status,
                    }
                }
            }
            Err(status) => status,
        };
        if !options.follow || !is_transient(&broke) {
            return Err(broke);
        }
        eprintln!(
            "gpubridge order logs: the stream broke ({}); resuming in {} ms",
            broke.message(),
            delay.as_millis()
        );
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_RESUME_DELAY);
    }
}

/// Forwards every connection to `listener` to `port` of the lease, each through a call of its
/// own, until the process ends. A connection the provider refuses is closed with the reason
/// printed; the next one tries again.
pub async fn forward(
    relay: RelayClient<Channel>,
    tokens: Tokens,
    port: u32,
    listener: TcpListener,
) -> std::io::Result<()> {
    loop {
        let (socket, peer) = listener.accept().await?;
        socket.set_nodelay(true).ok();
        let (relay, tokens) = (relay.clone(), tokens.clone());
        tokio::spawn(async move {
            if let Err(status) = tunnel(relay, &tokens, port, socket).await {
                eprintln!(
                    "gpubridge order connect: connection from {peer}: {}",
                    status.message()
                );
            }
        });
    }
}

/// One local connection through one Tunnel call, both ways, each side's close passed on.
pub async fn tunnel(
    relay: RelayClient<Channel>,
    tokens: &Tokens,
    port: u32,
    socket: TcpStream,
) -> Result<(), Status> {
    let (to_relay, from_relay) = open_tunnel(relay, tokens, port).await?;
    pipe(socket, to_relay, from_relay).await
}

/// Opens a Tunnel call to `port`. A call that failed for a while (a gateway that went away, the
/// provider's relay stream not back yet) is opened again, through whichever gateway answers,
/// with a fresh token (each is accepted once): nothing of the connection was read yet.
async fn open_tunnel(
    relay: RelayClient<Channel>,
    tokens: &Tokens,
    port: u32,
) -> Result<(mpsc::Sender<Chunk>, Streaming<Chunk>), Status> {
    let mut delay = Duration::from_millis(250);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (to_relay, outgoing) = mpsc::channel(8);
        let open = Chunk {
            kind: Some(chunk::Kind::Open(ConnectRequest {
                token: Some(tokens.sign(Scope::Connect, &[port])),
                port,
            })),
        };
        to_relay
            .try_send(open)
            .expect("an empty channel takes one chunk");
        match relay.clone().tunnel(ReceiverStream::new(outgoing)).await {
            Ok(response) => return Ok((to_relay, response.into_inner())),
            Err(status) if is_transient(&status) && attempt < OPEN_ATTEMPTS => {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(status) => return Err(status),
        }
    }
}

/// Copies a local connection to an open Tunnel call and back.
async fn pipe(
    socket: TcpStream,
    to_relay: mpsc::Sender<Chunk>,
    mut from_relay: Streaming<Chunk>,
) -> Result<(), Status> {
    let (mut read, mut write) = socket.into_split();
    let upload = async move {
        let mut buffer = vec![0u8; MAX_CHUNK_BYTES];
        loop {
            let n = read.read(&mut buffer).await.unwrap_or(0);
            if n == 0 {
                // Dropping the sender ends the call's upload: the workload sees the close.
                return;
            }
            let chunk = Chunk {
                kind: Some(chunk::Kind::Data(buffer[..n].to_vec())),
            };
            if to_relay.send(chunk).await.is_err() {
                return;
            }
        }
    };
    let download = async move {
        while let Some(chunk) = from_relay.message().await? {
            if let Some(chunk::Kind::Data(data)) = chunk.kind {
                write
                    .write_all(&data)
                    .await
                    .map_err(|e| Status::aborted(format!("writing locally: {e}")))?;
            }
        }
        write.shutdown().await.ok();
        Ok::<(), Status>(())
    };
    tokio::pin!(download);
    tokio::select! {
        done = &mut download => done,
        () = upload => download.await,
    }
}

/// Binds the local address `order connect` listens on.
pub async fn listen(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_split_whole_and_not_shown_twice_after_a_resume() {
        let mut lines = LogLines::new(false);
        assert_eq!(lines.push(b"2026-12-03T20:00:00.1Z hel"), b"");
        assert_eq!(
            lines.push(b"lo\n2026-12-03T20:00:00.2Z world\n2026-12-03T20:00:01Z par"),
            b"hello\nworld\n"
        );
        assert_eq!(
            lines.resume_from().as_deref(),
            Some("2026-12-03T20:00:00.2Z")
        );
        // A resumed stream starts again at an earlier time: what was shown is not shown again;
        // the partial line of the broken stream is replaced by the resumed one's.
        lines.restart();
        assert_eq!(
            lines.push(b"2026-12-03T20:00:00.1Z hello\n2026-12-03T20:00:00.2Z world\n2026-12-03T20:00:01Z part\n"),
            b"part\n"
        );
        // With --timestamps the times stay; a line without one is shown as it is.
        let mut stamped = LogLines::new(true);
        assert_eq!(
            stamped.push(b"2026-12-03T20:00:00Z a\nno time\n"),
            b"2026-12-03T20:00:00Z a\nno time\n"
        );
        assert_eq!(stamped.push(b"2026-12-03T20:00:03Z last"), b"");
        assert_eq!(stamped.finish(), b"2026-12-03T20:00:03Z last");
    }
}
