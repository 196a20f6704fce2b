//! [`AgentSession`]: a [`Session`] over any engine, driving the in-container agent.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use crate::agent::AGENT_VERSION;
use crate::channel::{AgentChannel, ChannelError};
use crate::config::SandboxConfig;
use crate::container::ContainerOps;
use crate::error::{Error, Result};
use crate::limits::LimitPlan;
use crate::mirror::RwMirror;
use crate::protocol::{FilePath, Hello, Message, Reply, Request, Script};
use crate::result::{ErrorKind, ExecutionResult, EXIT_KILLED, EXIT_TIMEOUT};
use crate::runtime::{InputStatus, RunEvent, RunOptions, Session, SessionInfo};
use crate::spec::reply_line_limit;
use crate::staging::Staging;
use crate::uids::UidLease;

/// How long a new supervisor may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of quick requests (ping, interrupt, file transfers).
const QUICK_TIMEOUT: Duration = Duration::from_secs(30);
/// Time the host waits beyond a run's own limit and grace before it gives up on the agent.
const HOST_SLACK: Duration = Duration::from_secs(10);

struct Connection {
    /// The sandbox the supervisor runs in (a fresh one after a supervisor was lost).
    ops: Arc<dyn ContainerOps>,
    channel: Arc<AgentChannel>,
    python: String,
}

/// Makes a fresh sandbox for a session (the argument numbers it): the session's own
/// spec, started anew.
pub type Relaunch = Arc<
    dyn Fn(u64) -> futures_util::future::BoxFuture<'static, Result<Arc<dyn ContainerOps>>>
        + Send
        + Sync,
>;

/// A live sandbox session on any engine: the backend made the container, this drives
/// the agent in it. Backends return it as `Box<dyn Session>`.
pub struct AgentSession {
    id: String,
    relaunch: Relaunch,
    /// Sandboxes made for this session so far.
    generation: AtomicU64,
    /// The caller was told that the sandbox is gone ([`Error::SandboxGone`]).
    gone_reported: AtomicBool,
    config: SandboxConfig,
    plan: LimitPlan,
    agent_argv: Vec<String>,
    conn: tokio::sync::RwLock<Connection>,
    run_lock: Arc<tokio::sync::Mutex<()>>,
    /// The supervisor was replaced since the last result: the next one reports lost state.
    lost: AtomicBool,
    runs: AtomicU64,
    temp_files: AtomicU64,
    closed: AtomicBool,
    /// Read-write exposures, mirrored back after every run.
    mirror: Option<RwMirror>,
    /// Host-side resources that live as long as the session: staged read-only copies
    /// and the lease on the sandbox uid.
    held: Option<(Staging, Option<UidLease>)>,
    /// The packages the image was built with, as its labels record them.
    image_packages: std::collections::BTreeMap<String, String>,
}

impl AgentSession {
    /// Records the packages the image was built with (its `org.biocage.packages`
    /// label), which [`Session::info`] reports.
    pub fn set_image_packages(&mut self, packages: std::collections::BTreeMap<String, String>) {
        self.image_packages = packages;
    }

    /// Starts the agent's supervisor in the (running) container behind `ops`; `relaunch`
    /// makes a fresh sandbox should the supervisor be lost. On failure the container is
    /// removed.
    pub async fn start(
        id: String,
        (ops, relaunch): (Arc<dyn ContainerOps>, Relaunch),
        config: SandboxConfig,
        plan: LimitPlan,
        agent_argv: Vec<String>,
        held: (Staging, Option<UidLease>),
    ) -> Result<Self> {
        let mirror = RwMirror::of(&config);
        let conn = bring_up(ops.clone(), &agent_argv, &config, mirror.as_ref()).await?;
        tracing::debug!(session = %id, container = %ops.container_id(), "session ready");
        Ok(AgentSession {
            id,
            relaunch,
            generation: AtomicU64::new(0),
            gone_reported: AtomicBool::new(false),
            config,
            plan,
            agent_argv,
            conn: tokio::sync::RwLock::new(conn),
            run_lock: Arc::new(tokio::sync::Mutex::new(())),
            lost: AtomicBool::new(false),
            runs: AtomicU64::new(0),
            temp_files: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            mirror,
            held: Some(held),
            image_packages: std::collections::BTreeMap::new(),
        })
    }

    /// How the limits of this session are enforced.
    pub fn limit_plan(&self) -> &LimitPlan {
        &self.plan
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::SessionClosed);
        }
        Ok(())
    }

    async fn channel(&self) -> Arc<AgentChannel> {
        self.conn.read().await.channel.clone()
    }

    async fn ops(&self) -> Arc<dyn ContainerOps> {
        self.conn.read().await.ops.clone()
    }

    /// Replaces a sandbox whose supervisor died, stopped answering, or whose container
    /// is gone: the old container is removed with every process in it, and the session
    /// goes on in a fresh one (same spec, same uid, exposures filled anew from the host).
    /// Never a new supervisor in the old sandbox: whatever sandbox code left there could
    /// wait for it and take it over. Earlier state is gone.
    async fn reconnect(&self, seen: &Arc<AgentChannel>) -> Result<()> {
        let mut conn = self.conn.write().await;
        if !Arc::ptr_eq(&conn.channel, seen) {
            // Another caller replaced the sandbox meanwhile: the fresh one stays.
            return Ok(());
        }
        let old = conn.ops.clone();
        tracing::warn!(session = %self.id, container = %old.container_id(), "the sandbox supervisor was lost; replacing the sandbox");
        if let Err(e) = old.remove().await {
            tracing::warn!(
                "removing the sandbox {} whose supervisor was lost: {e}",
                old.container_id()
            );
        }
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let ops = (self.relaunch)(generation).await?;
        *conn = bring_up(ops, &self.agent_argv, &self.config, self.mirror.as_ref()).await?;
        self.lost.store(true, Ordering::Release);
        self.gone_reported.store(false, Ordering::Release);
        Ok(())
    }

    /// Before a request on a closed channel: a sandbox that is gone is reported once
    /// ([`Error::SandboxGone`]); the request after that (or one whose sandbox still
    /// runs) gets a fresh sandbox.
    async fn recover(&self, seen: &Arc<AgentChannel>) -> Result<()> {
        let ops = self.ops().await;
        if !self.gone_reported.load(Ordering::Acquire) && !ops.is_running().await.unwrap_or(false) {
            self.gone_reported.store(true, Ordering::Release);
            return Err(Error::SandboxGone {
                container: ops.container_name().to_string(),
            });
        }
        self.reconnect(seen).await
    }

    /// Whether the next request needs a fresh sandbox first: its channel is closed, or
    /// the caller was told the sandbox is gone.
    fn needs_recovery(&self, channel: &AgentChannel) -> bool {
        channel.is_closed() || self.gone_reported.load(Ordering::Acquire)
    }

    /// A quick request; the error says what the agent refused.
    async fn quick(&self, req: Request) -> Result<Reply> {
        self.check_open()?;
        let mut channel = self.channel().await;
        if self.needs_recovery(&channel) {
            self.recover(&channel).await?;
            channel = self.channel().await;
        }
        channel.call(&req, QUICK_TIMEOUT).await
    }

    /// Mirrors read-write exposures back to the host; returns a note for stderr about
    /// what was not copied.
    async fn sync_back(&self) -> Option<String> {
        let mirror = self.mirror.as_ref()?;
        let channel = self.channel().await;
        match mirror.sync(&channel).await {
            Ok(note) => note,
            Err(e) => Some(format!(
                "[biocage] copying read-write exposures back to the host failed (tried again after the next run): {e}\n"
            )),
        }
    }

    async fn run_inner(
        &self,
        code: &str,
        opts: &RunOptions,
        events: Option<tokio::sync::mpsc::Sender<RunEvent>>,
    ) -> Result<ExecutionResult> {
        let timeout = opts.timeout.unwrap_or(self.config.timeout);
        self.check_open()?;
        crate::config::timeout_from_secs(timeout.as_secs_f64())?;
        if code.len() > self.config.max_code_bytes {
            return Err(Error::InvalidConfig {
                field: "code",
                value: format!("{} bytes", code.len()),
                reason: format!(
                    "code of one run is capped at {} ({} bytes, max_code_bytes); split it, or write data to a file with write_file",
                    crate::size::format_size(self.config.max_code_bytes as u64),
                    self.config.max_code_bytes
                ),
            });
        }
        let one_run = self.run_lock.clone().lock_owned().await;
        let mut channel = self.channel().await;
        if self.needs_recovery(&channel) {
            self.recover(&channel).await?;
            channel = self.channel().await;
        }
        self.runs.fetch_add(1, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let wait = timeout + self.config.interrupt_grace + HOST_SLACK;
        let req = Request::Run {
            code: code.to_string(),
            timeout: timeout.as_secs_f64(),
            script: opts.script.as_ref().map(|(path, argv)| Script {
                path: path.clone(),
                argv: argv.clone(),
            }),
            filename: opts.script.as_ref().map(|(path, _)| path.clone()),
            stream: events.is_some(),
        };
        let sink = events.map(|tx| -> crate::channel::EventSink {
            Box::new(move |msg| {
                if let Some(event) = RunEvent::from_agent(msg) {
                    // Full: dropped. The result holds everything within the caps anyway.
                    let _ = tx.try_send(event);
                }
            })
        });
        // Dropped before the reply (the caller gave up): the run is interrupted and the
        // session stays locked until the sandbox is idle again.
        let mut pending = PendingRun {
            channel: channel.clone(),
            lock: Some(one_run),
            wait,
        };
        let outcome = channel.request_streaming(&req, wait, sink).await;
        pending.lock = None;
        let elapsed = started.elapsed().as_secs_f64();
        let mut result = match outcome {
            Ok(Message::Result(result)) => *result,
            Ok(Message::Error { message }) => return Err(Error::Agent(message)),
            Ok(_) => return Err(Error::Agent("unexpected reply".into())),
            Err(e @ ChannelError::Malformed(_)) => return Err(Error::Agent(e.to_string())),
            Err(ChannelError::Closed) | Err(ChannelError::Send(_)) => {
                self.recover(&channel).await?;
                self.lost_result(
                    ErrorKind::Crashed,
                    "SupervisorKilled",
                    "the sandbox supervisor was killed during the run (output of the run is lost); the session goes on in a fresh sandbox and earlier state is lost".into(),
                    EXIT_KILLED,
                    elapsed,
                )
            }
            Err(ChannelError::TimedOut(_)) => {
                self.recover(&channel).await?;
                self.lost_result(
                    ErrorKind::Timeout,
                    "TimeoutError",
                    format!("the run exceeded its {timeout:?} limit and the sandbox stopped answering; every sandbox process was killed and earlier state is lost"),
                    EXIT_TIMEOUT,
                    elapsed,
                )
            }
        };
        if self.lost.swap(false, Ordering::AcqRel) {
            result.state_lost = true;
            if let Some(m) = &self.mirror {
                result.stderr.push_str(&m.lost_note());
            }
        }
        if let Some(note) = self.sync_back().await {
            result.stderr.push_str(&note);
        }
        Ok(result)
    }

    fn lost_result(
        &self,
        kind: ErrorKind,
        name: &str,
        message: String,
        code: i32,
        elapsed: f64,
    ) -> ExecutionResult {
        let mut r = ExecutionResult::sandbox_failure(message, true);
        r.exit_code = code;
        r.execution_time = elapsed;
        if let Some(e) = r.error.as_mut() {
            e.kind = kind;
            e.name = Some(name.to_string());
        }
        r
    }
}

/// Starts the supervisor in the (running) container behind `ops` and fills the
/// read-write exposures from the host; on failure the container is removed.
async fn bring_up(
    ops: Arc<dyn ContainerOps>,
    argv: &[String],
    config: &SandboxConfig,
    mirror: Option<&RwMirror>,
) -> Result<Connection> {
    let started = async {
        let conn = connect(ops.clone(), argv, config).await?;
        if let Some(m) = mirror {
            m.fill(&conn.channel).await?;
        }
        Ok::<_, Error>(conn)
    };
    match started.await {
        Ok(conn) => Ok(conn),
        Err(e) => {
            if let Err(rm) = ops.remove().await {
                tracing::warn!("removing {} after a failed start: {rm}", ops.container_id());
            }
            Err(e)
        }
    }
}

async fn connect(
    ops: Arc<dyn ContainerOps>,
    argv: &[String],
    config: &SandboxConfig,
) -> Result<Connection> {
    let streams = ops.exec_attached(argv.to_vec()).await?;
    let (channel, hello) = AgentChannel::open(streams, HELLO_TIMEOUT, reply_line_limit(config))
        .await
        .map_err(|e| {
            Error::Agent(format!(
                "the supervisor did not start in container {} ({e}); does the image have python3 (3.8 or newer)?",
                ops.container_name()
            ))
        })?;
    if hello.agent_version != Some(AGENT_VERSION) {
        return Err(Error::Agent(format!("unexpected agent hello: {hello:?}")));
    }
    check_hardening(&hello, config.allow_unenforced_limits)?;
    Ok(Connection {
        ops,
        channel: Arc::new(channel),
        python: hello.python,
    })
}

/// A run whose caller may give up: dropped while `lock` is still held, it interrupts the
/// run and keeps the session locked until the supervisor is idle again.
struct PendingRun {
    channel: Arc<AgentChannel>,
    lock: Option<tokio::sync::OwnedMutexGuard<()>>,
    wait: Duration,
}

impl Drop for PendingRun {
    fn drop(&mut self) {
        let Some(lock) = self.lock.take() else {
            return;
        };
        let (channel, wait) = (self.channel.clone(), self.wait);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _lock = lock;
                let _ = channel.request(&Request::Interrupt, QUICK_TIMEOUT).await;
                let deadline = tokio::time::Instant::now() + wait;
                while tokio::time::Instant::now() < deadline {
                    match channel.request(&Request::Ping, QUICK_TIMEOUT).await {
                        Ok(Message::Ok(reply)) if reply.busy == Some(false) => break,
                        Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                        Err(_) => break,
                    }
                }
            });
        }
    }
}

/// Refuses a supervisor that could not harden itself (its seccomp filter or
/// no_new_privs), unless unenforced protections are allowed (then it is logged).
fn check_hardening(hello: &Hello, allow_unenforced: bool) -> Result<()> {
    for (enforced, what) in [
        (
            hello.seccomp,
            "its seccomp filter (no new namespaces, keyrings, bpf, ...)",
        ),
        (hello.no_new_privs, "no_new_privs"),
        (
            hello.privilege_separated,
            "privilege separation (the supervisor under a uid of its own)",
        ),
    ] {
        if enforced {
            continue;
        }
        if allow_unenforced {
            tracing::warn!("the sandbox supervisor runs without {what}: allowed by configuration");
            continue;
        }
        return Err(Error::UnenforceableLimit {
            limit: crate::limits::LimitName::Seccomp,
            engine: "this sandbox".into(),
            reason: format!(
                "the agent could not install {what} (python3 without ctypes, or an architecture other than x86_64 and aarch64)"
            ),
        });
    }
    Ok(())
}

#[async_trait]
impl Session for AgentSession {
    fn id(&self) -> &str {
        &self.id
    }

    async fn run(&self, code: &str) -> Result<ExecutionResult> {
        self.run_with(code, &RunOptions::default()).await
    }

    async fn run_with_timeout(&self, code: &str, timeout: Duration) -> Result<ExecutionResult> {
        self.run_with(code, &RunOptions::default().timeout(timeout))
            .await
    }

    async fn ping(&self) -> Result<()> {
        self.quick(Request::Ping).await.map(drop)
    }

    async fn input_status(&self, code: &str) -> Result<InputStatus> {
        let reply = self
            .quick(Request::IsComplete {
                code: code.to_string(),
            })
            .await?;
        reply
            .status
            .ok_or_else(|| Error::Agent("unexpected input status: none was given".into()))
    }

    async fn complete(&self, text: &str) -> Result<Vec<String>> {
        let _one_run = self.run_lock.lock().await;
        let reply = self
            .quick(Request::Complete {
                text: text.to_string(),
            })
            .await?;
        Ok(reply.matches)
    }

    async fn run_with(&self, code: &str, opts: &RunOptions) -> Result<ExecutionResult> {
        self.run_inner(code, opts, None).await
    }

    async fn run_streaming(
        &self,
        code: &str,
        opts: &RunOptions,
        events: tokio::sync::mpsc::Sender<RunEvent>,
    ) -> Result<ExecutionResult> {
        self.run_inner(code, opts, Some(events)).await
    }

    async fn interrupt(&self) -> Result<()> {
        self.check_open()?;
        self.channel()
            .await
            .request(&Request::Interrupt, QUICK_TIMEOUT)
            .await
            .map_err(|e| Error::Agent(e.to_string()))?;
        Ok(())
    }

    async fn restart(&self) -> Result<()> {
        self.check_open()?;
        let _one_run = self.run_lock.lock().await;
        let channel = self.channel().await;
        // A sandbox known to be gone is not asked (its channel may never answer).
        let asked = if self.needs_recovery(&channel) {
            None
        } else {
            Some(channel.request(&Request::Restart, QUICK_TIMEOUT).await)
        };
        match asked {
            Some(Ok(Message::Ok(_))) => Ok(()),
            // An error from the agent, no answer, or a gone sandbox: a fresh one instead.
            _ => {
                self.reconnect(&channel).await?;
                // Asked for: the caller knows state is gone.
                self.lost.store(false, Ordering::Release);
                Ok(())
            }
        }
    }

    async fn info(&self) -> Result<SessionInfo> {
        self.check_open()?;
        let ops = self.ops().await;
        Ok(SessionInfo {
            session_id: self.id.clone(),
            runtime: ops.engine().to_string(),
            isolation: self.config.isolation,
            container_id: ops.container_id().to_string(),
            container_name: ops.container_name().to_string(),
            is_running: ops.is_running().await?,
            image: self.config.image.clone(),
            exposed_paths: self.config.exposures.clone(),
            temp_files: usize::try_from(self.temp_files.load(Ordering::Relaxed))
                .unwrap_or(usize::MAX),
            limits: self.plan.limits.clone(),
            python_version: self.conn.read().await.python.clone(),
            user: self.config.user.clone(),
            runs: self.runs.load(Ordering::Relaxed),
            image_packages: self.image_packages.clone(),
        })
    }

    async fn write_file(&self, path: &str, data: &[u8]) -> Result<()> {
        if data.len() as u64 > self.config.max_transfer_bytes {
            return Err(Error::FileTransfer(format!(
                "{} bytes is over the {}-byte transfer cap (max_transfer_bytes)",
                data.len(),
                self.config.max_transfer_bytes
            )));
        }
        self.quick(Request::WriteFile {
            path: FilePath::Path(path.to_string()),
            data: BASE64.encode(data),
            offset: None,
            mode: None,
        })
        .await?;
        Ok(())
    }

    async fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        let reply = self
            .quick(Request::ReadFile {
                path: FilePath::Path(path.to_string()),
                offset: None,
                length: None,
                max_bytes: self.config.max_transfer_bytes,
            })
            .await?;
        BASE64
            .decode(reply.data.unwrap_or_default())
            .map_err(|e| Error::Agent(format!("the agent sent file data that is not base64: {e}")))
    }

    async fn list_dir(&self, path: &str) -> Result<Vec<String>> {
        let reply = self
            .quick(Request::ListDir {
                path: FilePath::Path(path.to_string()),
            })
            .await?;
        Ok(reply.names)
    }

    async fn create_temp_file(&self, content: &[u8], suffix: &str) -> Result<String> {
        if suffix.contains('/') || suffix.contains('\0') || suffix.len() > 64 {
            return Err(Error::FileTransfer(format!(
                "suffix {suffix:?} must be a short file-name ending without '/'"
            )));
        }
        let path = format!("/tmp/biocage-{}{suffix}", uuid::Uuid::new_v4().simple());
        self.write_file(&path, content).await?;
        self.temp_files.fetch_add(1, Ordering::Relaxed);
        Ok(path)
    }

    async fn close(mut self: Box<Self>) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if let Some(note) = self.sync_back().await {
            tracing::warn!(session = %self.id, "{}", note.trim_end());
        }
        let removed = self.ops().await.remove().await;
        release(self.held.take()).await;
        removed
    }
}

/// Removes the staging folder and frees the uid off the async threads: removing staged
/// copies of large exposures is blocking file work.
async fn release(held: Option<(Staging, Option<UidLease>)>) {
    if held.is_some() {
        if let Err(e) = tokio::task::spawn_blocking(move || drop(held)).await {
            tracing::warn!("removing a session's staging folder: {e}");
        }
    }
}

impl Drop for AgentSession {
    fn drop(&mut self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            tracing::debug!(session = %self.id, "session dropped without close; removing its container");
            let conn = self.conn.get_mut();
            let (ops, channel) = (conn.ops.clone(), Some(conn.channel.clone()));
            let mirror = self.mirror.clone();
            // Released only once the container is gone: its uid must not be handed out
            // while it still runs.
            let held = self.held.take();
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn(async move {
                        if let (Some(m), Some(ch)) = (mirror, channel) {
                            if let Err(e) = m.sync(&ch).await {
                                tracing::warn!("copying read-write exposures back: {e}");
                            }
                        }
                        if let Err(e) = ops.remove().await {
                            tracing::warn!("removing dropped sandbox {}: {e}", ops.container_id());
                        }
                        release(held).await;
                    });
                }
                // No runtime to remove it with: the container ends by itself once its
                // supervisor is gone (the agent's orphan watchdog) and is auto-removed.
                Err(_) => tracing::debug!(
                    "no async runtime to remove {}; it ends by itself",
                    ops.container_id()
                ),
            }
        }
    }
}

impl std::fmt::Debug for AgentSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentSession")
            .field("id", &self.id)
            .field(
                "container",
                &self
                    .conn
                    .try_read()
                    .map(|c| c.ops.container_id().to_string())
                    .ok(),
            )
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hello(fields: serde_json::Value) -> Hello {
        let mut v = json!({"agent_version": AGENT_VERSION});
        if let (Some(v), Some(f)) = (v.as_object_mut(), fields.as_object()) {
            v.extend(f.clone());
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_supervisor_without_its_filter_is_refused_unless_allowed() {
        let good =
            hello(json!({"seccomp": true, "no_new_privs": true, "privilege_separated": true}));
        assert!(check_hardening(&good, false).is_ok());
        for bad in [
            hello(json!({"seccomp": false, "no_new_privs": true, "privilege_separated": true})),
            hello(json!({"seccomp": true, "no_new_privs": false, "privilege_separated": true})),
            hello(json!({"seccomp": true, "no_new_privs": true, "privilege_separated": false})),
            hello(json!({})),
        ] {
            let err = check_hardening(&bad, false).unwrap_err().to_string();
            assert!(err.contains("allow_unenforced_limits"), "{err}");
            assert!(check_hardening(&bad, true).is_ok());
        }
    }
}
