//! The host end of the control channel: JSON lines to and from the agent's supervisor,
//! with replies matched to requests by id.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::container::AgentStreams;

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
}

/// Receives the events of a streamed request (called on the reader task: must not block).
pub type EventSink = Box<dyn Fn(Value) + Send + Sync>;

#[derive(Default)]
struct Pending {
    waiters: HashMap<u64, oneshot::Sender<Value>>,
    sinks: HashMap<u64, EventSink>,
    hello: Option<oneshot::Sender<Value>>,
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
    ) -> Result<(Self, Value), ChannelError> {
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
            Ok(Ok(hello)) => Ok((channel, hello)),
            Ok(Err(_)) => Err(ChannelError::Closed),
            Err(_) => Err(ChannelError::TimedOut(hello_timeout)),
        }
    }

    /// True once the supervisor's stdout has ended.
    pub fn is_closed(&self) -> bool {
        lock(&self.pending).closed
    }

    /// Sends `msg` (an object; its "id" is set here) and waits up to `wait` for the reply.
    pub async fn request(&self, msg: Value, wait: Duration) -> Result<Value, ChannelError> {
        self.request_streaming(msg, wait, None).await
    }

    /// Like [`AgentChannel::request`]; messages with the request's id and op "output" or
    /// "display" that come before the reply go to `sink`.
    pub async fn request_streaming(
        &self,
        mut msg: Value,
        wait: Duration,
        sink: Option<EventSink>,
    ) -> Result<Value, ChannelError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        msg["id"] = json!(id);
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
        let outcome = self.send_and_wait(id, msg, wait, rx).await;
        lock(&self.pending).sinks.remove(&id);
        outcome
    }

    async fn send_and_wait(
        &self,
        id: u64,
        msg: Value,
        wait: Duration,
        rx: oneshot::Receiver<Value>,
    ) -> Result<Value, ChannelError> {
        let mut line = msg.to_string().into_bytes();
        line.push(b'\n');
        let sent = async {
            let mut w = self.writer.lock().await;
            w.write_all(&line).await?;
            w.flush().await
        }
        .await;
        if let Err(e) = sent {
            lock(&self.pending).waiters.remove(&id);
            return Err(ChannelError::Send(e.to_string()));
        }
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(reply)) => Ok(reply),
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

async fn read_loop(
    mut stdout: futures_util::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>,
    pending: Arc<Mutex<Pending>>,
    max_line: usize,
) {
    let mut buf: Vec<u8> = Vec::new();
    // Set while the rest of an oversize line is skipped.
    let mut skipping = false;
    while let Some(chunk) = stdout.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("agent channel read error: {e}");
                break;
            }
        };
        let mut rest: &[u8] = &chunk;
        while let Some(pos) = rest.iter().position(|b| *b == b'\n') {
            if skipping {
                skipping = false;
            } else {
                buf.extend_from_slice(&rest[..pos]);
                dispatch(&buf, &pending);
            }
            buf.clear();
            rest = &rest[pos + 1..];
        }
        if !skipping {
            buf.extend_from_slice(rest);
            if buf.len() > max_line {
                tracing::error!("the agent sent a line over {max_line} bytes; dropped");
                fail_oversize(&buf, &pending, max_line);
                buf = Vec::new();
                skipping = true;
            }
        }
    }
    let mut p = lock(&pending);
    p.closed = true;
    p.waiters.clear();
    p.sinks.clear();
    p.hello = None;
}

/// Fails the request an oversize line answers: its id is the line's first field.
fn fail_oversize(head: &[u8], pending: &Mutex<Pending>, max_line: usize) {
    let prefix = &head[..head.len().min(64)];
    let id = prefix
        .strip_prefix(b"{\"id\":")
        .map(|r| {
            r.iter()
                .take_while(|b| b.is_ascii_digit())
                .copied()
                .collect::<Vec<u8>>()
        })
        .and_then(|d| std::str::from_utf8(&d).ok()?.parse::<u64>().ok());
    if let Some(tx) = id.and_then(|id| lock(pending).waiters.remove(&id)) {
        let _ = tx.send(json!({"op": "error", "message": format!(
            "the sandbox sent a reply over {max_line} bytes, more than its caps allow; it was dropped"
        )}));
    }
}

fn dispatch(line: &[u8], pending: &Mutex<Pending>) {
    let msg: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(
                "agent sent a line that is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&line[..line.len().min(200)])
            );
            return;
        }
    };
    let mut p = lock(pending);
    if msg["op"] == "output" || msg["op"] == "display" {
        if let Some(sink) = msg["id"].as_u64().and_then(|id| p.sinks.get(&id)) {
            sink(msg);
        }
        return;
    }
    if msg["op"] == "hello" {
        if let Some(tx) = p.hello.take() {
            let _ = tx.send(msg);
        }
        return;
    }
    match msg["id"].as_u64().and_then(|id| p.waiters.remove(&id)) {
        Some(tx) => {
            let _ = tx.send(msg);
        }
        None => tracing::debug!("agent message for no waiting request: {msg}"),
    }
}

impl std::fmt::Debug for AgentChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentChannel")
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}
