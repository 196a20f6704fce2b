//! One sandbox container as a session drives it: attached processes, state, removal.

use std::io;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use tokio::io::AsyncWrite;

use crate::error::Result;

/// The stdio of a process started in a container with its stdin attached.
pub struct AgentStreams {
    /// What the process writes to its stdout (stderr goes to the backend's logs).
    pub stdout: BoxStream<'static, io::Result<Bytes>>,
    /// The process's stdin.
    pub stdin: Pin<Box<dyn AsyncWrite + Send>>,
}

/// One frame of an attached exec's multiplexed output, as an engine streams it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecFrame {
    /// Bytes the process wrote to stdout.
    Stdout(Bytes),
    /// Bytes the process wrote to stderr.
    Stderr(Bytes),
    /// Anything else (an echo of stdin, a console frame).
    Other,
}

impl AgentStreams {
    /// The streams of an agent process from its exec's frames and stdin: stdout is the
    /// control channel, stderr (the agent's own diagnostics) goes to the debug log.
    pub fn from_frames<E>(
        frames: impl futures_util::Stream<Item = std::result::Result<ExecFrame, E>> + Send + 'static,
        stdin: Pin<Box<dyn AsyncWrite + Send>>,
        container: String,
    ) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        use futures_util::StreamExt;
        let stdout = frames
            .filter_map(move |frame| {
                std::future::ready(match frame {
                    Ok(ExecFrame::Stdout(bytes)) => Some(Ok(bytes)),
                    Ok(ExecFrame::Stderr(bytes)) => {
                        tracing::debug!(%container, "agent stderr: {}", String::from_utf8_lossy(&bytes).trim_end());
                        None
                    }
                    Ok(ExecFrame::Other) => None,
                    Err(e) => Some(Err(io::Error::other(e))),
                })
            })
            .boxed();
        AgentStreams { stdout, stdin }
    }
}

/// Which container a [`ContainerOps`] acts on, and as whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerIdentity {
    /// Engine name ("docker", "podman").
    pub engine: &'static str,
    /// The container's id.
    pub id: String,
    /// The container's name.
    pub name: String,
    /// uid:gid that processes started in it run as.
    pub user: String,
}

impl ContainerIdentity {
    /// The identity of container `id`, created by `engine` from `spec`.
    pub fn of(engine: &'static str, id: String, spec: &crate::ContainerSpec) -> Self {
        ContainerIdentity {
            engine,
            id,
            name: spec.name.clone(),
            user: spec.user.clone(),
        }
    }

    /// An engine error while doing `action` in this container.
    pub fn failed(&self, action: &str, e: impl Into<crate::error::BoxError>) -> crate::Error {
        crate::Error::engine(self.engine, format!("{action} in {}", self.name), e)
    }
}

/// One running sandbox container. [`crate::AgentSession`] drives the agent through
/// this; [`crate::EngineRuntime`] implements it on any [`crate::Engine`].
#[async_trait]
pub trait ContainerOps: Send + Sync + 'static {
    /// The container this acts on.
    fn identity(&self) -> &ContainerIdentity;
    /// Engine name ("docker", "podman").
    fn engine(&self) -> &str {
        self.identity().engine
    }
    /// The container's id.
    fn container_id(&self) -> &str {
        &self.identity().id
    }
    /// The container's name.
    fn container_name(&self) -> &str {
        &self.identity().name
    }
    /// Starts `argv` in the container (as the sandbox user) with stdin and stdout attached.
    async fn exec_attached(&self, argv: Vec<String>) -> Result<AgentStreams>;
    /// Whether the container is running.
    async fn is_running(&self) -> Result<bool>;
    /// Removes the container and everything in it.
    async fn remove(&self) -> Result<()>;
}

impl std::fmt::Debug for AgentStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentStreams").finish_non_exhaustive()
    }
}
