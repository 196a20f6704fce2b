//! The seam between the core and a container engine: [`Engine`] is everything a backend
//! implements (a handful of engine calls, each mapped to the engine's own API), and
//! [`crate::EngineRuntime`] makes any engine a [`crate::SandboxRuntime`].

use std::collections::HashMap;

use async_trait::async_trait;
use futures_util::stream::BoxStream;

use crate::container::AgentStreams;
use crate::error::Result;
use crate::image::{FolderBuild, ImageDetails};
use crate::limits::Capabilities;
use crate::spec::ContainerSpec;

/// The state of a container, in the engine's own words mapped to one vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ContainerState {
    /// Created, not started yet.
    Created,
    /// Running.
    Running,
    /// Paused.
    Paused,
    /// Restarting.
    Restarting,
    /// Being removed.
    Removing,
    /// Stopped ("exited" on Docker, "stopped" or "exited" on Podman).
    Exited,
    /// Dead (a failed removal).
    Dead,
    /// A state word this list does not know.
    Other(String),
}

impl ContainerState {
    /// The state an engine names `word` (Docker and Podman share these words).
    pub fn from_engine(word: &str) -> Self {
        match word.to_ascii_lowercase().as_str() {
            "created" | "configured" | "initialized" => ContainerState::Created,
            "running" => ContainerState::Running,
            "paused" => ContainerState::Paused,
            "restarting" => ContainerState::Restarting,
            "removing" => ContainerState::Removing,
            "exited" | "stopped" | "stopping" => ContainerState::Exited,
            "dead" => ContainerState::Dead,
            _ => ContainerState::Other(word.to_string()),
        }
    }

    /// True when nothing runs in the container any more.
    pub fn is_over(&self) -> bool {
        matches!(self, ContainerState::Exited | ContainerState::Dead)
    }
}

impl std::fmt::Display for ContainerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ContainerState::Created => "created",
            ContainerState::Running => "running",
            ContainerState::Paused => "paused",
            ContainerState::Restarting => "restarting",
            ContainerState::Removing => "removing",
            ContainerState::Exited => "exited",
            ContainerState::Dead => "dead",
            ContainerState::Other(word) => word,
        })
    }
}

/// A container as the engine lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEntry {
    /// The container's id.
    pub id: String,
    /// Its name (as given at creation, without any engine decoration).
    pub name: String,
    /// The image it was made from.
    pub image: String,
    /// Its state.
    pub state: ContainerState,
    /// Its labels.
    pub labels: HashMap<String, String>,
}

/// One message of a build's output stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildChunk {
    /// Output text (one or more lines).
    pub text: Option<String>,
    /// A failed step's message: the build failed.
    pub error: Option<String>,
    /// The built image's id, when the engine reports it outside the text.
    pub image_id: Option<String>,
}

impl BuildChunk {
    /// A chunk of output `text`, a step's `error`, or the built `image_id`.
    pub fn new(text: Option<String>, error: Option<String>, image_id: Option<String>) -> Self {
        BuildChunk {
            text,
            error,
            image_id,
        }
    }
}

/// The calls a container engine answers for BioCage. Everything else (planning limits,
/// staging, the agent, sessions, orphan collection, image recipes) is the core's.
#[async_trait]
pub trait Engine: Send + Sync + std::fmt::Debug + 'static {
    /// The engine's name ("docker", "podman").
    fn name(&self) -> &'static str;

    /// Where the engine was reached (socket or URL), for messages.
    fn endpoint(&self) -> String;

    /// The command that builds the default image here, for the image-missing error.
    fn build_command(&self) -> &'static str;

    /// What the engine can enforce (read once per runtime; the runtime caches it).
    async fn capabilities(&self) -> Result<Capabilities>;

    /// Creates (does not start) the container `spec` describes; returns its id.
    /// `cgroup_limits` says whether to ask for memory, pids and cpu limits.
    async fn create(&self, spec: &ContainerSpec, cgroup_limits: bool) -> Result<String>;

    /// Starts a created container.
    async fn start(&self, id: &str) -> Result<()>;

    /// Starts `argv` in container `id` as `user` with stdin and stdout attached.
    async fn exec_attached(&self, id: &str, user: &str, argv: Vec<String>) -> Result<AgentStreams>;

    /// The container's state; None when the engine does not hold it.
    async fn state(&self, id: &str) -> Result<Option<ContainerState>>;

    /// Removes the container named `name` (stopping it first) with what the engine made
    /// for it; removing one that is already gone, or being removed, succeeds. The core
    /// passes names: they outlive a container the engine removed by itself.
    async fn remove(&self, name: &str) -> Result<()>;

    /// Removes what the engine made for containers that are gone (neither in
    /// `live_names` nor owned by a live process); returns how many. Called by `gc`.
    async fn remove_leftovers(&self, live_names: &[String]) -> Result<usize> {
        let _ = live_names;
        Ok(0)
    }

    /// The containers that carry `label=value`, running or not.
    async fn list(&self, label: &str, value: &str) -> Result<Vec<ContainerEntry>>;

    /// The image's id, tags, size, user and labels; None when the engine does not hold it.
    async fn image_details(&self, image: &str) -> Result<Option<ImageDetails>>;

    /// The images that carry the label `label` (any value).
    async fn list_images(&self, label: &str) -> Result<Vec<ImageDetails>>;

    /// Starts building `build` from `context` (a tar of its folder) and streams the
    /// engine's output.
    fn build_stream<'a>(
        &'a self,
        build: &FolderBuild,
        context: Vec<u8>,
    ) -> BoxStream<'a, Result<BuildChunk>>;

    /// After a build that produced `id`: tags it as `build` asks if the build did not,
    /// and returns the image's full id.
    async fn finish_build(&self, build: &FolderBuild, id: String) -> Result<String>;
}

/// An engine reached where its users expect it (its usual socket or environment), so
/// that `EngineRuntime::<E>::connect()` needs no arguments.
#[async_trait]
pub trait Connect: Engine + Sized {
    /// Connects, or says which engine was not reachable where, and how to start it.
    async fn connect() -> Result<Self>;
}
