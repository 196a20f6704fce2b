//! The two traits callers use: [`SandboxRuntime`] makes sessions, [`Session`] runs code.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::config::{Exposure, SandboxConfig};
use crate::error::Result;
use crate::image::{BuildOptions, BuiltImage, ImageDetails};
use crate::limits::{Capabilities, LimitPlan, LimitStatus};
use crate::result::ExecutionResult;

/// A container engine that makes sandboxes. Object-safe: hold a `Box<dyn SandboxRuntime>`.
#[async_trait]
pub trait SandboxRuntime: Send + Sync {
    /// The engine's name ("docker", "podman").
    fn name(&self) -> &str;

    /// What the engine can enforce, as reached now.
    async fn capabilities(&self) -> Result<Capabilities>;

    /// How `config`'s limits would be enforced here (errors if one cannot be and the
    /// config does not allow that).
    async fn limit_plan(&self, config: &SandboxConfig) -> Result<LimitPlan> {
        LimitPlan::new(&self.capabilities().await?, config)
    }

    /// Whether `image` is present in the engine.
    async fn image_exists(&self, image: &str) -> Result<bool>;

    /// The image's id, size, user and labels (what BioCage recorded when it built it),
    /// or None when the engine does not hold it.
    async fn image_details(&self, image: &str) -> Result<Option<ImageDetails>>;

    /// The BioCage images the engine holds (those with the `org.biocage.image` label).
    async fn list_images(&self) -> Result<Vec<ImageDetails>>;

    /// Builds an image through the engine API (the recipe, or a custom image with the
    /// packages asked for; see [`crate::image`]), reporting progress to `progress`.
    async fn build_image(
        &self,
        opts: &BuildOptions,
        progress: &mut crate::image::Progress<'_>,
    ) -> Result<BuiltImage>;

    /// Starts a sandbox and its live interpreter.
    async fn create_session(&self, config: &SandboxConfig) -> Result<Box<dyn Session>>;

    /// Runs `code` once in a fresh sandbox that is removed afterwards.
    async fn run_once(&self, config: &SandboxConfig, code: &str) -> Result<ExecutionResult> {
        let session = self.create_session(config).await?;
        let result = session.run(code).await;
        let closed = session.close().await;
        let result = result?;
        closed?;
        Ok(result)
    }

    /// The sandboxes this engine holds that BioCage made (by label), live or not.
    async fn list_sandboxes(&self) -> Result<Vec<SandboxSummary>>;

    /// Removes one managed sandbox by container id or name.
    async fn remove_sandbox(&self, id: &str) -> Result<()>;

    /// Removes managed sandboxes whose owner is gone: stopped ones, and those whose
    /// owning process no longer exists on this host, and the host-side staging folders
    /// of such processes. Returns the sandboxes removed.
    async fn gc(&self) -> Result<Vec<SandboxSummary>> {
        gc_sandboxes(self).await
    }
}

/// What [`SandboxRuntime::gc`] does for every engine: staging folders of processes that
/// are gone, then the orphaned sandboxes.
pub async fn gc_sandboxes<R: SandboxRuntime + ?Sized>(rt: &R) -> Result<Vec<SandboxSummary>> {
    let stale = tokio::task::spawn_blocking(crate::staging::remove_stale_staging)
        .await
        .unwrap_or(0);
    if stale > 0 {
        tracing::info!("removed {stale} staging folders of processes that are gone");
    }
    let mut removed = Vec::new();
    for s in rt.list_sandboxes().await? {
        if s.is_orphaned() {
            match rt.remove_sandbox(&s.container_id).await {
                Ok(()) => removed.push(s),
                // Gone between the listing and now (auto-removed with its owner): done.
                Err(crate::Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

/// Removes orphaned sandboxes (left by a host process that died), logging what it did.
/// Long-lived front ends (the CLI, the Python package, the MCP server) call it once after
/// they connect, so nothing outlives its owner for long; a library user decides.
pub async fn reap_orphans(rt: &dyn SandboxRuntime) {
    match rt.gc().await {
        Ok(removed) if !removed.is_empty() => {
            let names: Vec<&str> = removed.iter().map(|s| s.name.as_str()).collect();
            tracing::info!(
                engine = rt.name(),
                "removed orphaned sandboxes: {}",
                names.join(", ")
            );
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(
            engine = rt.name(),
            "could not remove orphaned sandboxes: {e}"
        ),
    }
}

/// A managed sandbox as listed by [`SandboxRuntime::list_sandboxes`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxSummary {
    /// Container id.
    pub container_id: String,
    /// Container name.
    pub name: String,
    /// Session id label.
    pub session_id: String,
    /// Image.
    pub image: String,
    /// Engine state ("running", "exited", ...).
    pub state: String,
    /// Host pid of the process that made it, if labelled.
    pub owner_pid: Option<u32>,
    /// Host that made it, if labelled.
    #[serde(default)]
    pub owner_host: Option<String>,
    /// Its isolation ("container", "gvisor"), as labelled.
    #[serde(default)]
    pub isolation: String,
}

impl SandboxSummary {
    /// A summary of a container the engine lists, from its BioCage labels.
    pub(crate) fn from_entry(entry: crate::engine::ContainerEntry) -> Self {
        use crate::spec::{LABEL_ISOLATION, LABEL_OWNER_HOST, LABEL_OWNER_PID, LABEL_SESSION};
        let labels = entry.labels;
        SandboxSummary {
            container_id: entry.id,
            name: entry.name,
            session_id: labels.get(LABEL_SESSION).cloned().unwrap_or_default(),
            image: entry.image,
            state: entry.state.to_string(),
            owner_pid: labels.get(LABEL_OWNER_PID).and_then(|p| p.parse().ok()),
            owner_host: labels.get(LABEL_OWNER_HOST).cloned(),
            isolation: labels
                .get(LABEL_ISOLATION)
                .cloned()
                .unwrap_or_else(|| "container".into()),
        }
    }

    /// True when nothing can be using it any more: it has stopped, or the process that
    /// made it (on this host) is gone. A sandbox of a live owner, or of another host, is
    /// kept even while it is still being created.
    pub fn is_orphaned(&self) -> bool {
        crate::engine::ContainerState::from_engine(&self.state).is_over()
            || owner_gone(self.owner_pid, self.owner_host.as_deref())
    }
}

/// True when the process that made something (by its owner labels) ran on this host
/// and is gone; unknown or other hosts' owners count as alive.
fn owner_gone(pid: Option<u32>, host: Option<&str>) -> bool {
    let here = host == Some(crate::spec::host_name().as_str());
    match pid {
        Some(pid) if here => !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        _ => false,
    }
}

/// Whether the owner that BioCage's labels name (owner pid and host) may still use what
/// carries them: false only when it ran on this host and is gone.
pub fn owner_alive(labels: &std::collections::HashMap<String, String>) -> bool {
    use crate::spec::{LABEL_OWNER_HOST, LABEL_OWNER_PID};
    !owner_gone(
        labels.get(LABEL_OWNER_PID).and_then(|p| p.parse().ok()),
        labels.get(LABEL_OWNER_HOST).map(String::as_str),
    )
}

/// What [`Session::info`] reports, as the reference's `get_container_info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Session id.
    pub session_id: String,
    /// Engine name.
    pub runtime: String,
    /// What isolates the sandbox from the host's kernel.
    #[serde(default)]
    pub isolation: crate::config::Isolation,
    /// Container id.
    pub container_id: String,
    /// Container name.
    pub container_name: String,
    /// Whether the container is running.
    pub is_running: bool,
    /// Image.
    pub image: String,
    /// Host paths exposed.
    pub exposed_paths: Vec<Exposure>,
    /// Temporary files created with `create_temp_file`.
    pub temp_files: usize,
    /// Every limit and how it is enforced.
    pub limits: Vec<LimitStatus>,
    /// Python version in the sandbox.
    pub python_version: String,
    /// uid:gid that runs the session's code.
    pub user: String,
    /// Runs done so far.
    pub runs: u64,
    /// The packages asked for when the image was built (`biocage image build`), with
    /// their installed versions, as its labels record them; empty for other images.
    #[serde(default)]
    pub image_packages: std::collections::BTreeMap<String, String>,
}

/// How one run is made; [`RunOptions::default`] is a plain run with the configured limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunOptions {
    /// The run's time limit (the configured one if None).
    pub timeout: Option<Duration>,
    /// Run as a script: its path in the sandbox and its arguments.
    pub script: Option<(String, Vec<String>)>,
}

impl RunOptions {
    /// A run with its own time limit.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// A run as `python PATH ARGS...` would run a script at `path` in the sandbox.
    pub fn script(mut self, path: impl Into<String>, argv: Vec<String>) -> Self {
        self.script = Some((path.into(), argv));
        self
    }
}

/// Something a run produced while it was going (see [`Session::run_streaming`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunEvent {
    /// Text written to stdout.
    Stdout(String),
    /// Text written to stderr.
    Stderr(String),
    /// A `display(obj)` call: MIME type to data, as in the result's `displays`.
    Display(std::collections::BTreeMap<String, String>),
}

impl RunEvent {
    /// The event an agent message describes, if it is one.
    pub(crate) fn from_agent(msg: crate::protocol::Message) -> Option<Self> {
        use crate::protocol::{Message, OutputStream};
        match msg {
            Message::Output {
                stream: OutputStream::Stdout,
                data,
            } => Some(RunEvent::Stdout(data)),
            Message::Output {
                stream: OutputStream::Stderr,
                data,
            } => Some(RunEvent::Stderr(data)),
            Message::Display { bundle } => Some(RunEvent::Display(bundle)),
            _ => None,
        }
    }
}

/// Whether input at an interactive prompt is a whole statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum InputStatus {
    /// Complete: run it.
    Complete,
    /// More lines are needed (an open block or bracket).
    Incomplete,
    /// Not valid Python: running it reports the SyntaxError.
    Invalid,
}

/// A live sandbox with one interpreter whose state persists between runs.
/// Object-safe; all methods take `&self` so that [`Session::interrupt`] can be called
/// while a run is in progress.
#[async_trait]
pub trait Session: Send + Sync {
    /// The session's id.
    fn id(&self) -> &str;

    /// Runs `code` with the configured time limit.
    async fn run(&self, code: &str) -> Result<ExecutionResult>;

    /// Runs `code` with its own time limit.
    async fn run_with_timeout(&self, code: &str, timeout: Duration) -> Result<ExecutionResult>;

    /// Runs `code` as `opts` say: its own time limit, or as a script file run with
    /// arguments (`python PATH ARGS...`: `sys.argv`, `__file__`, `sys.path[0]`).
    async fn run_with(&self, code: &str, opts: &RunOptions) -> Result<ExecutionResult>;

    /// Runs `code` as [`Session::run_with`] does, sending its output (and displays) to
    /// `events` as they are produced. The result is complete whatever the consumer does;
    /// events that find `events` full are dropped (a slow consumer never blocks the
    /// sandbox nor grows memory), and the caps hold as for the result.
    async fn run_streaming(
        &self,
        code: &str,
        opts: &RunOptions,
        events: tokio::sync::mpsc::Sender<RunEvent>,
    ) -> Result<ExecutionResult>;

    /// Whether `code` is a complete statement at an interactive prompt, decided by
    /// Python's own `codeop` in the sandbox.
    async fn input_status(&self, code: &str) -> Result<InputStatus>;

    /// Names in the live namespace that complete `text` (for a REPL's tab key).
    async fn complete(&self, text: &str) -> Result<Vec<String>>;

    /// A round trip to the supervisor: fails when the session cannot run code now.
    async fn ping(&self) -> Result<()>;

    /// Interrupts the run in progress (KeyboardInterrupt in user code; state kept).
    async fn interrupt(&self) -> Result<()>;

    /// Replaces the interpreter with a fresh one: all state is dropped.
    async fn restart(&self) -> Result<()>;

    /// Container and limit information.
    async fn info(&self) -> Result<SessionInfo>;

    /// Writes `data` to `path` in the sandbox (workspace, /tmp or a read-write exposure).
    async fn write_file(&self, path: &str, data: &[u8]) -> Result<()>;

    /// Reads `path` from the sandbox, up to the configured transfer cap.
    async fn read_file(&self, path: &str) -> Result<Vec<u8>>;

    /// The names in the folder `path` in the sandbox (the places `read_file` reaches),
    /// sorted; links planted by sandbox code are not followed.
    async fn list_dir(&self, path: &str) -> Result<Vec<String>> {
        Err(crate::error::Error::FileTransfer(format!(
            "{path}: this session cannot list folders"
        )))
    }

    /// Creates a temporary file holding `content`; returns its path in the sandbox.
    async fn create_temp_file(&self, content: &[u8], suffix: &str) -> Result<String>;

    /// Stops the sandbox and removes its container.
    async fn close(self: Box<Self>) -> Result<()>;
}
