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

#[derive(Default)]
struct Pending {
    waiters: HashMap<u64, oneshot::Sender<Value>>,
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

/// Longest line the host accepts from the supervisor (two capped streams, images, JSON escaping).
const MAX_LINE: usize = 1 << 30;

impl AgentChannel {
    /// Wraps the attached stdio of a supervisor and waits for its hello message.
    pub async fn open(
        streams: AgentStreams,
        hello_timeout: Duration,
    ) -> Result<(Self, Value), ChannelError> {
        let pending = Arc::new(Mutex::new(Pending::default()));
        let (hello_tx, hello_rx) = oneshot::channel();
        lock(&pending).hello = Some(hello_tx);
        let reader = tokio::spawn(read_loop(streams.stdout, pending.clone()));
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
    pub async fn request(&self, mut msg: Value, wait: Duration) -> Result<Value, ChannelError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        msg["id"] = json!(id);
        let (tx, rx) = oneshot::channel();
        {
            let mut p = lock(&self.pending);
            if p.closed {
                return Err(ChannelError::Closed);
            }
            p.waiters.insert(id, tx);
        }
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
) {
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = stdout.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("agent channel read error: {e}");
                break;
            }
        };
        let mut start = buf.len();
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf[start..].iter().position(|b| *b == b'\n') {
            let end = start + pos;
            dispatch(&buf[..end], &pending);
            buf.drain(..=end);
            start = 0;
        }
        if buf.len() > MAX_LINE {
            tracing::error!("agent sent a line over {MAX_LINE} bytes; closing the channel");
            break;
        }
    }
    let mut p = lock(&pending);
    p.closed = true;
    p.waiters.clear();
    p.hello = None;
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
