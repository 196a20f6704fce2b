//! One client's sandbox: started on first use, replaced on a pooled reset, closed (its
//! container removed) when the client goes away, whatever is running then.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use biocage_core::Session;

use crate::Backend;

/// A live session, shared by the calls that use it; the last one out closes it.
pub(crate) type Shared = Arc<Box<dyn Session>>;

/// How long a close waits for calls still using the session before it leaves the
/// removal to the last of them (a session removes its container when dropped).
const CLOSE_WAIT: Duration = Duration::from_secs(15);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data: a panic elsewhere cannot leave it half-updated.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

enum Slot {
    /// Nothing started yet.
    Empty,
    /// The session in use.
    Live(Shared),
    /// The client is gone: nothing may start any more.
    Closed,
}

/// The sandbox of one client connection.
pub(crate) struct SandboxCell {
    backend: Arc<Backend>,
    slot: Mutex<Slot>,
    /// Held while a session starts, so that concurrent first calls start one.
    starting: tokio::sync::Mutex<()>,
    /// Runs in progress.
    running: AtomicUsize,
}

/// Counts a run in progress for as long as it lives.
pub(crate) struct Running<'a>(&'a AtomicUsize);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl SandboxCell {
    /// A cell with nothing started.
    pub(crate) fn new(backend: Arc<Backend>) -> Self {
        SandboxCell {
            backend,
            slot: Mutex::new(Slot::Empty),
            starting: tokio::sync::Mutex::new(()),
            running: AtomicUsize::new(0),
        }
    }

    fn current(&self) -> Result<Option<Shared>, String> {
        match &*lock(&self.slot) {
            Slot::Empty => Ok(None),
            Slot::Live(s) => Ok(Some(s.clone())),
            Slot::Closed => Err(closed_message()),
        }
    }

    /// The session in use, without starting one.
    pub(crate) fn peek(&self) -> Option<Shared> {
        self.current().ok().flatten()
    }

    /// Whether a session was started (and not closed).
    pub(crate) fn is_live(&self) -> bool {
        matches!(&*lock(&self.slot), Slot::Live(_))
    }

    /// The session, started now if this is the first use.
    pub(crate) async fn session(&self) -> Result<Shared, String> {
        if let Some(s) = self.current()? {
            return Ok(s);
        }
        let _one = self.starting.lock().await;
        if let Some(s) = self.current()? {
            return Ok(s);
        }
        let fresh = self
            .backend
            .start_session()
            .await
            .map_err(|e| format!("the sandbox could not be started: {e}"))?;
        tracing::info!(session = fresh.id(), "sandbox started for a client");
        let fresh: Shared = Arc::new(fresh);
        let closed = {
            let mut slot = lock(&self.slot);
            if matches!(*slot, Slot::Closed) {
                true
            } else {
                *slot = Slot::Live(fresh.clone());
                false
            }
        };
        if closed {
            close_when_free(fresh).await;
            return Err(closed_message());
        }
        Ok(fresh)
    }

    /// Marks a run in progress until the returned guard is dropped.
    pub(crate) fn running(&self) -> Running<'_> {
        self.running.fetch_add(1, Ordering::AcqRel);
        Running(&self.running)
    }

    /// Whether a run is in progress.
    pub(crate) fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire) > 0
    }

    /// A fresh interpreter: a new sandbox from the pool when there is one (the old one
    /// is closed behind), else the same sandbox's interpreter restarted. Code running
    /// now is interrupted first. Returns what happened, for the client.
    pub(crate) async fn reset(&self) -> Result<String, String> {
        let Some(old) = self.current()? else {
            self.session().await?;
            return Ok("Started a fresh Python interpreter (nothing had run yet).".into());
        };
        if self.is_running() {
            let _ = old.interrupt().await;
        }
        if self.backend.pooled() {
            let _one = self.starting.lock().await;
            let fresh = self
                .backend
                .start_session()
                .await
                .map_err(|e| format!("no fresh sandbox could be started: {e}"))?;
            let fresh: Shared = Arc::new(fresh);
            let replaced = {
                let mut slot = lock(&self.slot);
                match &*slot {
                    Slot::Closed => None,
                    _ => Some(std::mem::replace(&mut *slot, Slot::Live(fresh.clone()))),
                }
            };
            match replaced {
                Some(Slot::Live(old)) => {
                    tokio::spawn(close_when_free(old));
                }
                Some(_) => {}
                None => {
                    close_when_free(fresh).await;
                    return Err(closed_message());
                }
            }
            Ok("Started a fresh sandbox: every variable, import and definition is gone, and so are files in /workspace and /tmp (read-write exposures keep what was copied back).".into())
        } else {
            old.restart()
                .await
                .map_err(|e| format!("the interpreter could not be restarted: {e}"))?;
            Ok("Started a fresh Python interpreter: every variable, import and definition is gone; files in /workspace and /tmp are kept.".into())
        }
    }

    /// Closes the sandbox for good: stops what runs and removes the container (after
    /// the calls still using it have let go). Later calls are refused.
    pub(crate) async fn close(&self) {
        let old = std::mem::replace(&mut *lock(&self.slot), Slot::Closed);
        if let Slot::Live(session) = old {
            if self.is_running() {
                let _ = session.interrupt().await;
            }
            close_when_free(session).await;
        }
    }
}

fn closed_message() -> String {
    "this connection's sandbox was closed (the client disconnected or the server is stopping); reconnect to get a new one".into()
}

/// Closes `session` once no call holds it any more; past [`CLOSE_WAIT`], leaves the
/// removal to the last holder (dropping a session removes its container).
pub(crate) async fn close_when_free(session: Shared) {
    let deadline = Instant::now() + CLOSE_WAIT;
    let mut session = session;
    loop {
        match Arc::try_unwrap(session) {
            Ok(only) => {
                let id = only.id().to_string();
                match only.close().await {
                    Ok(()) => tracing::info!(session = %id, "sandbox closed"),
                    Err(e) => tracing::warn!(session = %id, "closing the sandbox: {e}"),
                }
                return;
            }
            Err(shared) if Instant::now() < deadline => {
                session = shared;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Err(shared) => {
                tracing::warn!(
                    session = shared.id(),
                    "a call still holds the sandbox; it is removed when that call ends"
                );
                return;
            }
        }
    }
}

/// Every client's sandbox (HTTP), by MCP session id once a tool call has told it, so
/// that a session that expires or vanishes has its sandbox closed at once, and a
/// stopping server closes them all.
#[derive(Default)]
pub(crate) struct Registry {
    cells: Mutex<Vec<Weak<SandboxCell>>>,
    by_session: Mutex<HashMap<String, Weak<SandboxCell>>>,
}

impl Registry {
    /// Adds a connection's cell.
    pub(crate) fn add(&self, cell: &Arc<SandboxCell>) {
        let mut cells = lock(&self.cells);
        cells.retain(|c| c.strong_count() > 0);
        cells.push(Arc::downgrade(cell));
    }

    /// Records that MCP session `id` uses `cell`.
    pub(crate) fn bind(&self, id: &str, cell: &Arc<SandboxCell>) {
        let mut map = lock(&self.by_session);
        if !map.contains_key(id) {
            map.retain(|_, c| c.strong_count() > 0);
            map.insert(id.to_string(), Arc::downgrade(cell));
        }
    }

    /// The cell of MCP session `id`, forgetting the binding.
    pub(crate) fn unbind(&self, id: &str) -> Option<Arc<SandboxCell>> {
        lock(&self.by_session).remove(id).and_then(|c| c.upgrade())
    }

    /// Closes every sandbox.
    pub(crate) async fn close_all(&self) {
        let cells: Vec<Arc<SandboxCell>> =
            lock(&self.cells).iter().filter_map(Weak::upgrade).collect();
        futures_util::future::join_all(cells.iter().map(|c| c.close())).await;
    }
}
