//! The host end of the control channel: JSON lines to and from the agent's supervisor
//! (the messages of [`crate::protocol`]), with replies matched to requests by id.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::codec::{Decoder, FramedRead, LinesCodec, LinesCodecError};
use tokio_util::io::StreamReader;

use crate::container::AgentStreams;
use crate::protocol::{self, Envelope, Hello, Incoming, Message, Reply, Request};

/// Why a request got no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The supervisor's stdout ended: it exited or was killed.
    #[error("the sandbox supervisor went away")]
    Closed,
    /// No reply within the deadline.
    #[error("the sandbox supervisor did not answer within {0:?}")]
    TimedOut(Duration),
    /// Writing the request failed.
    #[error("could not send to the sandbox supervisor: {0}")]
    Send(String),
    /// The reply is JSON with the request's id but not a message of the protocol.
    #[error("malformed reply from the sandbox supervisor: {0}")]
    Malformed(String),
}

/// Receives the events ([`Message::Output`], [`Message::Display`]) of a streamed
/// request (called on the reader task: must not block).
pub type EventSink = Box<dyn Fn(Message) + Send + Sync>;

type Waiter = oneshot::Sender<Result<Message, ChannelError>>;

#[derive(Default)]
struct Pending {
    waiters: HashMap<u64, Waiter>,
    sinks: HashMap<u64, EventSink>,
    hello: Option<oneshot::Sender<Result<Hello, ChannelError>>>,
    closed: bool,
}

/// A connected supervisor. Dropping it ends the reader task and closes stdin, which
/// makes the supervisor exit.
pub struct AgentChannel {
    writer: tokio::sync::Mutex<Pin<Box<dyn AsyncWrite + Send>>>,
    pending: Arc<Mutex<Pending>>,
    next_id: AtomicU64,
    reader: JoinHandle<()>,
}

impl AgentChannel {
    /// Wraps the attached stdio of a supervisor and waits for its hello message.
    /// A line longer than `max_line` bytes is not read into memory: the request it
    /// answers (its "id" comes first) fails with a sandbox error, and the channel goes on.
    pub async fn open(
        streams: AgentStreams,
        hello_timeout: Duration,
        max_line: usize,
    ) -> Result<(Self, Hello), ChannelError> {
        let pending = Arc::new(Mutex::new(Pending::default()));
        let (hello_tx, hello_rx) = oneshot::channel();
        lock(&pending).hello = Some(hello_tx);
        let reader = tokio::spawn(read_loop(streams.stdout, pending.clone(), max_line));
        let channel = AgentChannel {
            writer: tokio::sync::Mutex::new(streams.stdin),
            pending,
            next_id: AtomicU64::new(1),
            reader,
        };
        match tokio::time::timeout(hello_timeout, hello_rx).await {
            Ok(Ok(Ok(hello))) => Ok((channel, hello)),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(ChannelError::Closed),
            Err(_) => Err(ChannelError::TimedOut(hello_timeout)),
        }
    }

    /// True once the supervisor's stdout has ended.
    pub fn is_closed(&self) -> bool {
        lock(&self.pending).closed
    }

    /// Sends `req` (with an id set here) and waits up to `wait` for the reply. `req` is
    /// a [`Request`], or anything else that serializes to an object with an "op" (tests
    /// send ops the agent does not know).
    pub async fn request<R: Serialize + ?Sized>(
        &self,
        req: &R,
        wait: Duration,
    ) -> Result<Message, ChannelError> {
        self.request_streaming(req, wait, None).await
    }

    /// Like [`AgentChannel::request`]; the events with the request's id ("output" and
    /// "display") that come before the reply go to `sink`.
    pub async fn request_streaming<R: Serialize + ?Sized>(
        &self,
        req: &R,
        wait: Duration,
        sink: Option<EventSink>,
    ) -> Result<Message, ChannelError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut line = protocol::encode_request(id, req)
            .map_err(|e| ChannelError::Send(e.to_string()))?
            .into_bytes();
        line.push(b'\n');
        let (tx, rx) = oneshot::channel();
        {
            let mut p = lock(&self.pending);
            if p.closed {
                return Err(ChannelError::Closed);
            }
            p.waiters.insert(id, tx);
            if let Some(sink) = sink {
                p.sinks.insert(id, sink);
            }
        }
        let outcome = self.send_and_wait(id, &line, wait, rx).await;
        lock(&self.pending).sinks.remove(&id);
        outcome
    }

    /// Sends `req` and takes its "ok" reply. A refusal ("error") is an
    /// [`Error::FileTransfer`](crate::Error::FileTransfer) with the agent's message; no
    /// reply, or a reply of another kind, an [`Error::Agent`](crate::Error::Agent).
    pub(crate) async fn call(&self, req: &Request, wait: Duration) -> crate::Result<Reply> {
        let reply = self
            .request(req, wait)
            .await
            .map_err(|e| crate::Error::Agent(e.to_string()))?;
        match reply {
            Message::Ok(reply) => Ok(*reply),
            Message::Error { message } => Err(crate::Error::FileTransfer(message)),
            other => Err(crate::Error::Agent(format!(
                "unexpected {:?} reply from the sandbox supervisor",
                other.op()
            ))),
        }
    }

    async fn send_and_wait(
        &self,
        id: u64,
        line: &[u8],
        wait: Duration,
        rx: oneshot::Receiver<Result<Message, ChannelError>>,
    ) -> Result<Message, ChannelError> {
        let sent = async {
            let mut w = self.writer.lock().await;
            w.write_all(line).await?;
            w.flush().await
        }
        .await;
        if let Err(e) = sent {
            lock(&self.pending).waiters.remove(&id);
            return Err(ChannelError::Send(e.to_string()));
        }
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(ChannelError::Closed),
            Err(_) => {
                lock(&self.pending).waiters.remove(&id);
                Err(ChannelError::TimedOut(wait))
            }
        }
    }
}

impl Drop for AgentChannel {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn lock(p: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    // A panic while holding this lock cannot leave the map inconsistent.
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// Lines from the supervisor, framed by tokio-util's [`LinesCodec`] with its length cap.
///
/// A wrapper rather than the bare codec because [`FramedRead`] ends its stream after a
/// decoder error, and an over-long line (`MaxLineLengthExceeded`) or one that is not
/// UTF-8 must not end the channel. The wrapper turns both into frames; for an over-long
/// line it reads the id at the start of the line, which is still in the buffer when the
/// codec reports it (the codec discards the rest of the line from its next call on).
#[derive(Debug)]
struct AgentLines {
    lines: LinesCodec,
}

/// One frame of the supervisor's stdout.
#[derive(Debug)]
enum Frame {
    /// A whole line, without its newline.
    Line(String),
    /// A line over the cap, dropped; the id it starts with, if it is readable.
    TooLong(Option<u64>),
    /// A line that is not UTF-8, dropped.
    NotText,
}

impl AgentLines {
    fn new(max_line: usize) -> Self {
        AgentLines {
            lines: LinesCodec::new_with_max_length(max_line),
        }
    }
}

impl Decoder for AgentLines {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> std::io::Result<Option<Frame>> {
        match self.lines.decode(buf) {
            Ok(line) => Ok(line.map(Frame::Line)),
            Err(LinesCodecError::MaxLineLengthExceeded) => {
                Ok(Some(Frame::TooLong(leading_id(buf))))
            }
            // The codec's only other error here: a line that is not UTF-8 (already taken
            // out of the buffer). Read errors come from FramedRead, not from decode.
            Err(LinesCodecError::Io(_)) => Ok(Some(Frame::NotText)),
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> std::io::Result<Option<Frame>> {
        let frame = self.decode(buf)?;
        if frame.is_none() {
            // A last line without its newline is not a message: dropped.
            buf.clear();
        }
        Ok(frame)
    }
}

/// The id an over-long line starts with: the agent writes `{"id":ID,` first.
fn leading_id(head: &[u8]) -> Option<u64> {
    let prefix = &head[..head.len().min(64)];
    let digits: Vec<u8> = prefix
        .strip_prefix(b"{\"id\":")?
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

async fn read_loop(
    stdout: futures_util::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>,
    pending: Arc<Mutex<Pending>>,
    max_line: usize,
) {
    let mut frames = FramedRead::new(StreamReader::new(stdout), AgentLines::new(max_line));
    while let Some(frame) = frames.next().await {
        match frame {
            Ok(Frame::Line(line)) => dispatch(&line, &pending),
            Ok(Frame::TooLong(id)) => {
                tracing::error!("the agent sent a line over {max_line} bytes; dropped");
                fail_oversize(id, &pending, max_line);
            }
            Ok(Frame::NotText) => {
                tracing::warn!("the agent sent a line that is not UTF-8; dropped")
            }
            Err(e) => {
                tracing::debug!("agent channel read error: {e}");
                break;
            }
        }
    }
    let mut p = lock(&pending);
    p.closed = true;
    p.waiters.clear();
    p.sinks.clear();
    p.hello = None;
}

/// Fails the request an oversize line answers (`id`, the line's first field).
fn fail_oversize(id: Option<u64>, pending: &Mutex<Pending>, max_line: usize) {
    if let Some(tx) = id.and_then(|id| lock(pending).waiters.remove(&id)) {
        let _ = tx.send(Ok(Message::Error {
            message: format!(
                "the sandbox sent a reply over {max_line} bytes, more than its caps allow; it was dropped"
            ),
        }));
    }
}

fn dispatch(line: &str, pending: &Mutex<Pending>) {
    let incoming = match protocol::parse_line(line) {
        Ok(incoming) => incoming,
        Err(e) => {
            let mut end = line.len().min(200);
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            tracing::warn!(
                "agent sent a line that is not a message ({e}): {:?}",
                &line[..end]
            );
            return;
        }
    };
    let mut p = lock(pending);
    match incoming {
        Incoming::Message(Envelope { id, body }) => match body {
            Message::Output { .. } | Message::Display { .. } => {
                if let Some(sink) = id.and_then(|id| p.sinks.get(&id)) {
                    sink(body);
                }
            }
            Message::Hello(hello) => {
                if let Some(tx) = p.hello.take() {
                    let _ = tx.send(Ok(hello));
                }
            }
            Message::Unknown => {
                tracing::debug!("agent message of an unknown op ignored (id {id:?})");
            }
            reply => match id.and_then(|id| p.waiters.remove(&id)) {
                Some(tx) => {
                    let _ = tx.send(Ok(reply));
                }
                None => {
                    tracing::debug!("agent {:?} for no waiting request (id {id:?})", reply.op())
                }
            },
        },
        Incoming::Malformed { id, op, error } => {
            tracing::warn!("{error} (id {id:?}, op {op:?})");
            match op.as_deref() {
                // A bad event: dropped; the run's result still holds what it showed.
                Some("output" | "display") => {}
                Some("hello") => {
                    if let Some(tx) = p.hello.take() {
                        let _ = tx.send(Err(ChannelError::Malformed(error.0)));
                    }
                }
                _ => {
                    if let Some(tx) = id.and_then(|id| p.waiters.remove(&id)) {
                        let _ = tx.send(Err(ChannelError::Malformed(error.0)));
                    }
                }
            }
        }
    }
}

impl std::fmt::Debug for AgentChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentChannel")
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(max_line: usize, chunks: &[&[u8]]) -> Vec<String> {
        let mut codec = AgentLines::new(max_line);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut take = |frame: Frame| {
            out.push(match frame {
                Frame::Line(l) => l,
                Frame::TooLong(id) => format!("too long: {id:?}"),
                Frame::NotText => "not text".into(),
            })
        };
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some(frame) = codec.decode(&mut buf).unwrap() {
                take(frame);
            }
        }
        while let Some(frame) = codec.decode_eof(&mut buf).unwrap() {
            take(frame);
        }
        assert!(buf.is_empty());
        out
    }

    #[test]
    fn lines_over_the_cap_give_their_id_and_the_next_line_comes() {
        assert_eq!(
            frames(
                16,
                &[
                    b"{\"id\":12,\"op\":\"result\",",
                    b"\"stdout\":\"aaaaaaaa\"}\n{\"id\":3}\n"
                ]
            ),
            ["too long: Some(12)", "{\"id\":3}"]
        );
        assert_eq!(
            frames(8, &[b"{\"op\":\"x\",\"id\":1}\nabc\n"]),
            ["too long: None", "abc"]
        );
    }

    #[test]
    fn lines_that_are_not_text_are_dropped_and_so_is_a_last_unfinished_line() {
        assert_eq!(
            frames(64, &[b"\xff\n{\"id\":1}\n{\"id\":2"]),
            ["not text", "{\"id\":1}"]
        );
    }
}
