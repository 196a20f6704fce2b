//! Sessions from Python: the sync calls (GIL released while waiting, Ctrl-C forwarded
//! to the sandbox as an interrupt) and the asyncio ones (futures resolved on the event
//! loop's thread), over one shared tokio runtime.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use biocage_core::{Error, SandboxConfig, Session};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyString};
use tokio::runtime::Runtime;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::config::PyConfig;
use crate::engine::{connect, is_this_process, runtime, Choice};
use crate::errors::{py_result, Failure};

/// How often a waiting sync call looks for signals (Ctrl-C) to handle.
const SIGNAL_POLL: Duration = Duration::from_millis(50);
/// How often a cancelled run is interrupted again until it has stopped.
const REINTERRUPT: Duration = Duration::from_millis(200);
/// How long a cancelled run may take to stop beyond its interrupt grace before the
/// caller stops waiting (the run's own time limit still ends it).
const STOP_SLACK: Duration = Duration::from_secs(3);

type Shared = Arc<Box<dyn Session>>;

/// One live session and the bookkeeping its callers share.
pub(crate) struct Inner {
    engine: String,
    id: String,
    pid: u32,
    interrupt_grace: Duration,
    /// The sandbox's working folder: relative file paths are in it.
    workspace: String,
    /// The session; taken out at close. Callers clone the `Arc` for the length of a call.
    session: Mutex<Option<Shared>>,
    /// Runs wait here, in call order (the core serializes them too).
    gate: tokio::sync::Mutex<()>,
    /// Id of the run in progress (0: none).
    current: AtomicU64,
    next: AtomicU64,
    /// Runs asked for but not started; true when cancelled before they started.
    pending: Mutex<HashMap<u64, bool>>,
    /// Signalled when a run or call ends.
    ended: Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every session of this process, for closing them at interpreter exit.
static LIVE: Mutex<Vec<Weak<Inner>>> = Mutex::new(Vec::new());

/// Closes of dropped sessions going on in the background (waited for at exit).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static DRAINED: Notify = Notify::const_new();
/// Longest wait at interpreter exit for background closes.
const EXIT_WAIT: Duration = Duration::from_secs(15);

impl Inner {
    fn new(engine: &str, session: Box<dyn Session>, config: &SandboxConfig) -> Arc<Self> {
        let inner = Arc::new(Inner {
            engine: engine.to_string(),
            id: session.id().to_string(),
            pid: std::process::id(),
            interrupt_grace: config.interrupt_grace,
            workspace: config.workspace.clone(),
            session: Mutex::new(Some(Arc::new(session))),
            gate: tokio::sync::Mutex::new(()),
            current: AtomicU64::new(0),
            next: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
            ended: Notify::new(),
        });
        let mut live = lock(&LIVE);
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(&inner));
        inner
    }

    fn get(&self) -> Result<Shared, Failure> {
        lock(&self.session)
            .clone()
            .ok_or(Failure::Core(Error::SessionClosed))
    }

    /// Reserves the id of a run about to be asked for.
    fn reserve(&self) -> u64 {
        let seq = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        lock(&self.pending).insert(seq, false);
        seq
    }

    async fn run(
        &self,
        seq: u64,
        code: String,
        timeout: Option<Duration>,
    ) -> Result<String, Failure> {
        let _gate = self.gate.lock().await;
        if lock(&self.pending).remove(&seq) == Some(true) {
            return Err(Failure::Internal(
                "the run was cancelled before it started".into(),
            ));
        }
        let session = self.get()?;
        self.current.store(seq, Ordering::SeqCst);
        let result = match timeout {
            Some(t) => session.run_with_timeout(&code, t).await,
            None => session.run(&code).await,
        };
        self.current.store(0, Ordering::SeqCst);
        drop(session);
        self.ended.notify_waiters();
        let result = result?;
        serde_json::to_string(&result)
            .map_err(|e| Failure::Internal(format!("cannot serialize a result: {e}")))
    }

    /// Stops run `seq`: interrupts it (again, until it has stopped) if it is running,
    /// or drops it if it has not started. Returns once it has stopped, or after the
    /// run's interrupt grace and some slack.
    async fn cancel_run(&self, seq: u64) {
        let deadline = tokio::time::Instant::now() + self.interrupt_grace + STOP_SLACK;
        loop {
            if let Some(cancelled) = lock(&self.pending).get_mut(&seq) {
                *cancelled = true;
                return;
            }
            if self.current.load(Ordering::SeqCst) != seq {
                return;
            }
            if let Ok(s) = self.get() {
                if let Err(e) = s.interrupt().await {
                    tracing::debug!(session = %self.id, "interrupting a cancelled run: {e}");
                }
            }
            let ended = self.ended.notified();
            tokio::select! {
                _ = ended => {}
                _ = tokio::time::sleep(REINTERRUPT) => {}
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    /// Closes the session: a run in progress (of another thread) is interrupted, calls
    /// in progress are waited for, then the container is removed. A run that ignores
    /// the interrupt past its grace is left to end at its time limit: the container is
    /// removed then, in the background.
    async fn close(&self) -> Result<(), Failure> {
        let Some(mut shared) = lock(&self.session).take() else {
            return Ok(());
        };
        let deadline = tokio::time::Instant::now() + self.interrupt_grace + STOP_SLACK;
        loop {
            match Arc::try_unwrap(shared) {
                Ok(session) => return Ok(session.close().await?),
                Err(still_used) => shared = still_used,
            }
            if tokio::time::Instant::now() >= deadline {
                let id = self.id.clone();
                IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let session = loop {
                        match Arc::try_unwrap(shared) {
                            Ok(session) => break session,
                            Err(still_used) => shared = still_used,
                        }
                        tokio::time::sleep(REINTERRUPT).await;
                    };
                    if let Err(e) = session.close().await {
                        tracing::warn!(session = %id, "removing a closed sandbox: {e}");
                    }
                    IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
                    DRAINED.notify_waiters();
                });
                return Ok(());
            }
            if self.current.load(Ordering::SeqCst) != 0 {
                let _ = shared.interrupt().await;
            }
            let ended = self.ended.notified();
            tokio::select! {
                _ = ended => {}
                _ = tokio::time::sleep(REINTERRUPT) => {}
            }
        }
    }

    /// `path` in the sandbox: a relative one is in the workspace.
    fn sandbox_path(&self, path: String) -> String {
        if path.starts_with('/') {
            path
        } else {
            format!("{}/{path}", self.workspace.trim_end_matches('/'))
        }
    }

    async fn perform(&self, op: Op) -> Result<Out, Failure> {
        let session = self.get()?;
        let out = match op {
            Op::Interrupt => session.interrupt().await.map(|()| Out::Unit),
            Op::Restart => session.restart().await.map(|()| Out::Unit),
            Op::Info => session.info().await.and_then(|info| {
                serde_json::to_string(&info)
                    .map(Out::Text)
                    .map_err(|e| Error::Agent(format!("cannot serialize session info: {e}")))
            }),
            Op::ReadFile(path) => session
                .read_file(&self.sandbox_path(path))
                .await
                .map(Out::Bytes),
            Op::WriteFile(path, data) => session
                .write_file(&self.sandbox_path(path), &data)
                .await
                .map(|()| Out::Unit),
            Op::TempFile(content, suffix) => session
                .create_temp_file(&content, &suffix)
                .await
                .map(Out::Text),
        };
        drop(session);
        self.ended.notify_waiters();
        Ok(out?)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let Some(shared) = self
            .session
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        if !is_this_process(self.pid) {
            // A forked child's copy of its parent's session: the parent's to close.
            std::mem::forget(shared);
            return;
        }
        let Ok(session) = Arc::try_unwrap(shared) else {
            return;
        };
        let id = self.id.clone();
        let close = async move {
            if let Err(e) = session.close().await {
                tracing::warn!(session = %id, "removing a dropped sandbox: {e}");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
                handle.spawn(async move {
                    close.await;
                    IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
                    DRAINED.notify_waiters();
                });
            }
            Err(_) => match runtime() {
                Ok(rt) => rt.block_on(close),
                Err(e) => tracing::warn!("cannot remove a dropped sandbox: {e}"),
            },
        }
    }
}

/// A call on a session other than a run.
enum Op {
    Interrupt,
    Restart,
    Info,
    ReadFile(String),
    WriteFile(String, Vec<u8>),
    TempFile(Vec<u8>, String),
}

/// What a call returns.
enum Out {
    Unit,
    Text(String),
    Bytes(Vec<u8>),
}

fn out_to_py(py: Python<'_>, out: Out) -> PyResult<Py<PyAny>> {
    Ok(match out {
        Out::Unit => py.None(),
        Out::Text(t) => PyString::new(py, &t).into_any().unbind(),
        Out::Bytes(b) => PyBytes::new(py, &b).into_any().unbind(),
    })
}

fn text_to_py(py: Python<'_>, text: String) -> PyResult<Py<PyAny>> {
    Ok(PyString::new(py, &text).into_any().unbind())
}

/// Waits for `handle` without the GIL, looking for signals every [`SIGNAL_POLL`]: the
/// exception a signal handler raised (KeyboardInterrupt for Ctrl-C) is returned as
/// `Err`, the task going on.
pub(crate) fn wait_for<T: Send + 'static>(
    py: Python<'_>,
    rt: &'static Runtime,
    handle: &mut JoinHandle<T>,
) -> PyResult<T> {
    loop {
        let step = py.detach(|| {
            rt.block_on(async { tokio::time::timeout(SIGNAL_POLL, &mut *handle).await })
        });
        match step {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => {
                return Err(PyRuntimeError::new_err(format!(
                    "biocage internal error (a task failed): {e}"
                )))
            }
            Err(_) => py.check_signals()?,
        }
    }
}

/// Runs `fut` on the runtime and returns an asyncio future of `event_loop` that is
/// resolved (on the loop's thread) with `convert` of its output, or with its error.
fn asyncio_future<T, F>(
    py: Python<'_>,
    event_loop: &Bound<'_, PyAny>,
    fut: F,
    convert: fn(Python<'_>, T) -> PyResult<Py<PyAny>>,
) -> PyResult<Py<PyAny>>
where
    T: Send + 'static,
    F: Future<Output = Result<T, Failure>> + Send + 'static,
{
    let rt = py_result(py, runtime())?;
    let py_future = event_loop.call_method0("create_future")?;
    let target = py_future.clone().unbind();
    let event_loop = event_loop.clone().unbind();
    rt.spawn(async move {
        let out = fut.await;
        Python::try_attach(move |py| {
            let (ok, value) = match out
                .map_err(|f| f.into_pyerr(py))
                .and_then(|v| convert(py, v))
            {
                Ok(v) => (true, v),
                Err(e) => (false, e.into_value(py).into_any()),
            };
            if let Err(e) = resolve(py, &event_loop, target, ok, value) {
                // The loop is closed: nobody waits for this any more.
                tracing::debug!("cannot hand a result to its event loop: {e}");
            }
        });
    });
    Ok(py_future.unbind())
}

fn resolve(
    py: Python<'_>,
    event_loop: &Py<PyAny>,
    target: Py<PyAny>,
    ok: bool,
    value: Py<PyAny>,
) -> PyResult<()> {
    static RESOLVE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let resolve = RESOLVE.get_or_try_init(py, || {
        py.import("biocage._aio")?
            .getattr("resolve")
            .map(Bound::unbind)
    })?;
    event_loop.call_method1(
        py,
        "call_soon_threadsafe",
        (resolve.clone_ref(py), target, ok, value),
    )?;
    Ok(())
}

async fn create(choice: Choice, config: SandboxConfig) -> Result<Arc<Inner>, Failure> {
    let engine = connect(choice).await?;
    let session = engine.create_session(&config).await?;
    Ok(Inner::new(engine.name(), session, &config))
}

/// A live sandbox session (the native half of `biocage.Sandbox` and
/// `biocage.AsyncSandbox`; use those).
#[pyclass(module = "biocage._native", name = "SessionCore", frozen)]
pub struct SessionCore {
    inner: Option<Arc<Inner>>,
    /// Made for asyncio: dropping it must not block (the event loop's thread), so the
    /// container is removed in the background.
    background_drop: bool,
}

impl SessionCore {
    fn inner(&self) -> PyResult<&Arc<Inner>> {
        self.inner
            .as_ref()
            .ok_or_else(|| PyRuntimeError::new_err("the session is being dropped"))
    }

    fn call(&self, py: Python<'_>, op: Op) -> PyResult<Py<PyAny>> {
        let rt = py_result(py, runtime())?;
        let inner = self.inner()?.clone();
        let mut handle = rt.spawn(async move { inner.perform(op).await });
        let out = wait_for(py, rt, &mut handle)?;
        out_to_py(py, py_result(py, out)?)
    }

    fn call_async(
        &self,
        py: Python<'_>,
        event_loop: &Bound<'_, PyAny>,
        op: Op,
    ) -> PyResult<Py<PyAny>> {
        let inner = self.inner()?.clone();
        asyncio_future(
            py,
            event_loop,
            async move { inner.perform(op).await },
            out_to_py,
        )
    }
}

impl Drop for SessionCore {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        if self.background_drop {
            if let Ok(rt) = runtime() {
                rt.spawn(async move { drop(inner) });
                return;
            }
        }
        // The last reference closes the session, which waits for the engine to remove
        // the container: without the GIL, so that other threads go on meanwhile.
        let release = move || drop(inner);
        let _ = Python::try_attach(|py| py.detach(release));
    }
}

fn duration(py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Duration>> {
    timeout
        .map(|t| {
            biocage_core::config::timeout_from_secs(t).map_err(|e| Failure::Core(e).into_pyerr(py))
        })
        .transpose()
}

#[pymethods]
impl SessionCore {
    /// The session's id.
    #[getter]
    fn id(&self) -> PyResult<String> {
        Ok(self.inner()?.id.clone())
    }

    /// The engine's name ("docker" or "podman").
    #[getter]
    fn engine(&self) -> PyResult<String> {
        Ok(self.inner()?.engine.clone())
    }

    /// True once closed.
    #[getter]
    fn closed(&self) -> PyResult<bool> {
        Ok(lock(&self.inner()?.session).is_none())
    }

    /// Runs `code`; returns the result as JSON. Ctrl-C interrupts the run, waits for it
    /// to stop, and raises KeyboardInterrupt.
    #[pyo3(signature = (code, timeout = None))]
    fn run(&self, py: Python<'_>, code: String, timeout: Option<f64>) -> PyResult<String> {
        let timeout = duration(py, timeout)?;
        let rt = py_result(py, runtime())?;
        let inner = self.inner()?.clone();
        let seq = inner.reserve();
        let task = inner.clone();
        let mut handle = rt.spawn(async move { task.run(seq, code, timeout).await });
        match wait_for(py, rt, &mut handle) {
            Ok(result) => py_result(py, result),
            Err(signal) => {
                // The host was interrupted: so is the sandbox's run, before the
                // exception goes on (a second Ctrl-C stops the waiting).
                let mut stopper = rt.spawn(async move {
                    inner.cancel_run(seq).await;
                    let _ = handle.await;
                });
                let _ = wait_for(py, rt, &mut stopper);
                Err(signal)
            }
        }
    }

    /// Benchmark baseline: runs `code` `n` times from Rust alone (no Python between
    /// runs, as the Rust latency benchmark does) and returns each run's seconds.
    fn bench_native(&self, py: Python<'_>, code: String, n: usize) -> PyResult<Vec<f64>> {
        let rt = py_result(py, runtime())?;
        let session = py_result(py, self.inner()?.get())?;
        let times = py.detach(|| {
            rt.block_on(async {
                let mut times = Vec::with_capacity(n);
                for _ in 0..n {
                    let started = std::time::Instant::now();
                    session.run(&code).await?;
                    times.push(started.elapsed().as_secs_f64());
                }
                Ok::<_, Error>(times)
            })
        });
        py_result(py, times.map_err(Failure::Core))
    }

    /// Runs `code` on `loop`; returns `(run id, future of the result as JSON)`.
    #[pyo3(signature = (event_loop, code, timeout = None))]
    fn run_async(
        &self,
        py: Python<'_>,
        event_loop: &Bound<'_, PyAny>,
        code: String,
        timeout: Option<f64>,
    ) -> PyResult<(u64, Py<PyAny>)> {
        let timeout = duration(py, timeout)?;
        let inner = self.inner()?.clone();
        let seq = inner.reserve();
        let fut = asyncio_future(
            py,
            event_loop,
            async move { inner.run(seq, code, timeout).await },
            text_to_py,
        )?;
        Ok((seq, fut))
    }

    /// Stops run `run_id` of `run_async` in the background (its caller was cancelled).
    fn cancel_run(&self, py: Python<'_>, run_id: u64) -> PyResult<()> {
        let rt = py_result(py, runtime())?;
        let inner = self.inner()?.clone();
        rt.spawn(async move { inner.cancel_run(run_id).await });
        Ok(())
    }

    /// Interrupts the run in progress.
    fn interrupt(&self, py: Python<'_>) -> PyResult<()> {
        self.call(py, Op::Interrupt).map(|_| ())
    }

    /// `interrupt` on `loop`.
    fn interrupt_async(
        &self,
        py: Python<'_>,
        event_loop: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        self.call_async(py, event_loop, Op::Interrupt)
    }

    /// Replaces the interpreter.
    fn restart(&self, py: Python<'_>) -> PyResult<()> {
        self.call(py, Op::Restart).map(|_| ())
    }

    /// `restart` on `loop`.
    fn restart_async(&self, py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        self.call_async(py, event_loop, Op::Restart)
    }

    /// Session information as JSON.
    fn info(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.call(py, Op::Info)
    }

    /// `info` on `loop`.
    fn info_async(&self, py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        self.call_async(py, event_loop, Op::Info)
    }

    /// Reads a file of the sandbox.
    fn read_file(&self, py: Python<'_>, path: String) -> PyResult<Py<PyAny>> {
        self.call(py, Op::ReadFile(path))
    }

    /// `read_file` on `loop`.
    fn read_file_async(
        &self,
        py: Python<'_>,
        event_loop: &Bound<'_, PyAny>,
        path: String,
    ) -> PyResult<Py<PyAny>> {
        self.call_async(py, event_loop, Op::ReadFile(path))
    }

    /// Writes a file in the sandbox.
    fn write_file(&self, py: Python<'_>, path: String, data: &[u8]) -> PyResult<()> {
        self.call(py, Op::WriteFile(path, data.to_vec()))
            .map(|_| ())
    }

    /// `write_file` on `loop`.
    fn write_file_async(
        &self,
        py: Python<'_>,
        event_loop: &Bound<'_, PyAny>,
        path: String,
        data: &[u8],
    ) -> PyResult<Py<PyAny>> {
        self.call_async(py, event_loop, Op::WriteFile(path, data.to_vec()))
    }

    /// Creates a temporary file in the sandbox; returns its path.
    fn create_temp_file(
        &self,
        py: Python<'_>,
        content: &[u8],
        suffix: String,
    ) -> PyResult<Py<PyAny>> {
        self.call(py, Op::TempFile(content.to_vec(), suffix))
    }

    /// `create_temp_file` on `loop`.
    fn create_temp_file_async(
        &self,
        py: Python<'_>,
        event_loop: &Bound<'_, PyAny>,
        content: &[u8],
        suffix: String,
    ) -> PyResult<Py<PyAny>> {
        self.call_async(py, event_loop, Op::TempFile(content.to_vec(), suffix))
    }

    /// Closes the session and removes its container (idempotent).
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let rt = py_result(py, runtime())?;
        let inner = self.inner()?.clone();
        let mut handle = rt.spawn(async move { inner.close().await });
        py_result(py, wait_for(py, rt, &mut handle)?)
    }

    /// `close` on `loop`.
    fn close_async(&self, py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let inner = self.inner()?.clone();
        asyncio_future(
            py,
            event_loop,
            async move { inner.close().await },
            |py, ()| Ok(py.None()),
        )
    }

    /// Closes the session in the background (nobody waits for it).
    fn discard(&self, py: Python<'_>) -> PyResult<()> {
        let rt = py_result(py, runtime())?;
        let inner = self.inner()?.clone();
        rt.spawn(async move {
            if let Err(e) = inner.close().await {
                tracing::warn!(session = %inner.id, "closing a discarded sandbox: {e}");
            }
        });
        Ok(())
    }

    fn __repr__(&self) -> PyResult<String> {
        let inner = self.inner()?;
        Ok(format!(
            "<SessionCore {} on {}{}>",
            inner.id,
            inner.engine,
            if lock(&inner.session).is_none() {
                " (closed)"
            } else {
                ""
            }
        ))
    }
}

/// Starts a session on `runtime` ("docker", "podman" or "auto") with `config`.
#[pyfunction]
pub(crate) fn start(
    py: Python<'_>,
    runtime_name: &str,
    config: PyRef<'_, PyConfig>,
) -> PyResult<SessionCore> {
    let choice = py_result(py, Choice::parse(runtime_name))?;
    let config = config.inner.clone();
    let rt = py_result(py, runtime())?;
    let mut handle = rt.spawn(create(choice, config));
    match wait_for(py, rt, &mut handle) {
        Ok(made) => Ok(SessionCore {
            inner: Some(py_result(py, made)?),
            background_drop: false,
        }),
        Err(signal) => {
            // Interrupted while it was being made: it is removed once made.
            rt.spawn(async move {
                if let Ok(Ok(inner)) = handle.await {
                    let _ = inner.close().await;
                }
            });
            Err(signal)
        }
    }
}

/// `start` on `loop`: a future of the `SessionCore`.
#[pyfunction]
pub(crate) fn start_async(
    py: Python<'_>,
    event_loop: &Bound<'_, PyAny>,
    runtime_name: &str,
    config: PyRef<'_, PyConfig>,
) -> PyResult<Py<PyAny>> {
    let choice = py_result(py, Choice::parse(runtime_name))?;
    let config = config.inner.clone();
    asyncio_future(py, event_loop, create(choice, config), |py, inner| {
        let core = SessionCore {
            inner: Some(inner),
            background_drop: true,
        };
        Ok(Py::new(py, core)?.into_any())
    })
}

/// Closes every session of this process that is still open (at interpreter exit).
#[pyfunction]
pub(crate) fn close_all(py: Python<'_>) -> PyResult<()> {
    let live: Vec<Arc<Inner>> = {
        let mut list = lock(&LIVE);
        let live = list.iter().filter_map(Weak::upgrade).collect();
        list.clear();
        live
    };
    let rt = py_result(py, runtime())?;
    let mut handle = rt.spawn(async move {
        let mut closing = tokio::task::JoinSet::new();
        for inner in live {
            if is_this_process(inner.pid) {
                closing.spawn(async move {
                    if let Err(e) = inner.close().await {
                        tracing::warn!(session = %inner.id, "closing at exit: {e}");
                    }
                });
            }
        }
        while closing.join_next().await.is_some() {}
        // Sessions dropped by asyncio code are being removed in the background.
        let _ = tokio::time::timeout(EXIT_WAIT, async {
            loop {
                let drained = DRAINED.notified();
                if IN_FLIGHT.load(Ordering::SeqCst) == 0 {
                    return;
                }
                drained.await;
            }
        })
        .await;
    });
    wait_for(py, rt, &mut handle)
}

impl std::fmt::Debug for SessionCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCore").finish_non_exhaustive()
    }
}
