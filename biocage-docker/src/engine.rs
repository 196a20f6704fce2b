//! [`DockerEngine`]: the engine calls of [`biocage_core::Engine`] on Docker, through
//! bollard. Images are in `image.rs`, the create body in `body.rs`.

use std::collections::HashMap;

use async_trait::async_trait;
use biocage_core::limits::Capabilities;
use biocage_core::{
    AgentStreams, Connect, ContainerEntry, ContainerSpec, ContainerState, Engine, EngineRuntime,
    Error, ExecFrame, Result,
};
use bollard::container::LogOutput;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, PruneVolumesOptions, RemoveContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;

use crate::body::create_body;
use crate::ENGINE;

/// Sandboxes on a Docker Engine: the runtime callers use.
pub type DockerRuntime = EngineRuntime<DockerEngine>;

/// A connected Docker Engine.
pub struct DockerEngine {
    pub(crate) docker: Docker,
    endpoint: String,
}

fn endpoint() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".to_string())
}

fn unreachable(endpoint: &str, reason: impl std::fmt::Display) -> Error {
    Error::EngineUnreachable {
        engine: ENGINE.to_string(),
        endpoint: endpoint.to_string(),
        reason: reason.to_string(),
        hint: "Start Docker (as root: scripts/setup.sh docker, or `dockerd &`), or point DOCKER_HOST at a running engine.".to_string(),
    }
}

pub use biocage_core::limits::GVISOR_RUNTIME;

pub(crate) fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

#[async_trait]
impl Connect for DockerEngine {
    /// Connects to the engine at `DOCKER_HOST` (default: the local socket) and
    /// negotiates the API version down to what it speaks.
    async fn connect() -> Result<Self> {
        let endpoint = endpoint();
        let docker = Docker::connect_with_defaults().map_err(|e| unreachable(&endpoint, e))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| unreachable(&endpoint, e))?;
        docker.ping().await.map_err(|e| unreachable(&endpoint, e))?;
        tracing::debug!(%endpoint, api = %docker.client_version(), "connected to docker");
        Ok(DockerEngine { docker, endpoint })
    }
}

impl DockerEngine {
    /// The bollard client, for what this crate does not wrap.
    pub fn client(&self) -> &Docker {
        &self.docker
    }
}

#[async_trait]
impl Engine for DockerEngine {
    fn name(&self) -> &'static str {
        ENGINE
    }

    fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    fn build_command(&self) -> &'static str {
        "biocage image build (or: sudo scripts/setup.sh docker)"
    }

    async fn capabilities(&self) -> Result<Capabilities> {
        let version = self
            .docker
            .version()
            .await
            .map_err(|e| unreachable(&self.endpoint, e))?;
        let info = self
            .docker
            .info()
            .await
            .map_err(|e| unreachable(&self.endpoint, e))?;
        let rootless = info
            .security_options
            .unwrap_or_default()
            .iter()
            .any(|o| o.contains("rootless"));
        let cgroup_version = match info.cgroup_version.map(|v| v.to_string()) {
            Some(v) if v == "2" => 2,
            Some(v) if v == "1" => 1,
            _ => 0,
        };
        // gVisor: the runtime setup registers, else any runtime that is runsc.
        let runtimes = info.runtimes.unwrap_or_default();
        let gvisor_runtime = if runtimes.contains_key(GVISOR_RUNTIME) {
            Some(GVISOR_RUNTIME.to_string())
        } else {
            runtimes
                .iter()
                .filter(|(_, r)| r.path.as_deref().is_some_and(|p| p.ends_with("runsc")))
                .map(|(name, _)| name.clone())
                .min()
        };
        Ok(Capabilities {
            engine: ENGINE.to_string(),
            engine_version: version.version.unwrap_or_default(),
            api_version: self.docker.client_version().to_string(),
            rootless,
            cgroup_version,
            // Rootless Docker on cgroup v1 cannot limit resources either.
            cgroup_limits: !(rootless && cgroup_version == 1),
            tmpfs_inode_limit: true,
            // Rootful Docker runs container uids as the same host uids.
            uid_map: Vec::new(),
            gid_map: Vec::new(),
            gvisor_runtime,
        })
    }

    async fn create(&self, spec: &ContainerSpec, cgroup_limits: bool) -> Result<String> {
        let opts = CreateContainerOptions {
            name: Some(spec.name.clone()),
            platform: String::new(),
        };
        let created = self
            .docker
            .create_container(Some(opts), create_body(spec, cgroup_limits)?)
            .await
            .map_err(|e| Error::engine(ENGINE, format!("creating container {}", spec.name), e))?;
        Ok(created.id)
    }

    async fn start(&self, id: &str) -> Result<()> {
        self.docker
            .start_container(id, None)
            .await
            .map_err(|e| Error::engine(ENGINE, format!("starting container {id}"), e))
    }

    async fn exec_attached(&self, id: &str, user: &str, argv: Vec<String>) -> Result<AgentStreams> {
        let config = ExecConfig {
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            cmd: Some(argv),
            user: Some(user.to_string()),
            ..Default::default()
        };
        let failed = |action: &str, e| Error::engine(ENGINE, format!("{action} in {id}"), e);
        let exec = self
            .docker
            .create_exec(id, config)
            .await
            .map_err(|e| failed("starting the agent", e))?;
        let opts = StartExecOptions {
            detach: false,
            tty: false,
            output_capacity: None,
        };
        match self
            .docker
            .start_exec(&exec.id, Some(opts))
            .await
            .map_err(|e| failed("attaching to the agent", e))?
        {
            StartExecResults::Attached { output, input } => {
                let frames = output.map(|frame| {
                    frame.map(|f| match f {
                        LogOutput::StdOut { message } => ExecFrame::Stdout(message),
                        LogOutput::StdErr { message } => ExecFrame::Stderr(message),
                        _ => ExecFrame::Other,
                    })
                });
                Ok(AgentStreams::from_frames(frames, input, id.to_string()))
            }
            StartExecResults::Detached => Err(Error::engine(
                ENGINE,
                "attaching to the agent",
                "the engine started the exec detached",
            )),
        }
    }

    async fn state(&self, id: &str) -> Result<Option<ContainerState>> {
        match self.docker.inspect_container(id, None).await {
            Ok(info) => Ok(Some(ContainerState::from_engine(
                &info
                    .state
                    .and_then(|s| s.status)
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
            ))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(Error::engine(ENGINE, "inspecting the container", e)),
        }
    }

    async fn remove(&self, id: &str) -> Result<()> {
        let opts = RemoveContainerOptions {
            force: true,
            v: true,
            link: false,
        };
        match self.docker.remove_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            // Already gone (auto-removed when it stopped), or being removed right now.
            Err(e) if is_not_found(&e) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(e) => Err(Error::engine(ENGINE, format!("removing container {id}"), e)),
        }
    }

    /// The tmpfs volumes of gVisor sessions (anonymous, removed with their container)
    /// that a container removal left behind: pruned, as no container uses them.
    async fn remove_leftovers(&self, _live_names: &[String]) -> Result<usize> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{}=true", biocage_core::LABEL_MANAGED)],
        )]);
        let pruned = self
            .docker
            .prune_volumes(Some(PruneVolumesOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(|e| Error::engine(ENGINE, "pruning unused BioCage volumes", e))?;
        Ok(pruned.volumes_deleted.map_or(0, |v| v.len()))
    }

    async fn list(&self, label: &str, value: &str) -> Result<Vec<ContainerEntry>> {
        let mut filters = HashMap::new();
        filters.insert("label".to_string(), vec![format!("{label}={value}")]);
        let opts = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let list = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(|e| Error::engine(ENGINE, "listing sandboxes", e))?;
        Ok(list
            .into_iter()
            .map(|c| ContainerEntry {
                id: c.id.unwrap_or_default(),
                // Docker lists names with a leading slash.
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_default(),
                image: c.image.unwrap_or_default(),
                state: ContainerState::from_engine(
                    &c.state.map(|s| s.to_string()).unwrap_or_default(),
                ),
                labels: c.labels.unwrap_or_default(),
            })
            .collect())
    }

    async fn image_details(&self, image: &str) -> Result<Option<biocage_core::ImageDetails>> {
        crate::image::image_details(&self.docker, image).await
    }

    async fn list_images(&self, label: &str) -> Result<Vec<biocage_core::ImageDetails>> {
        crate::image::list_images(&self.docker, label).await
    }

    fn build_stream<'a>(
        &'a self,
        build: &biocage_core::image::FolderBuild,
        context: Vec<u8>,
    ) -> futures_util::stream::BoxStream<'a, Result<biocage_core::BuildChunk>> {
        crate::image::build_stream(&self.docker, build, context)
    }

    async fn finish_build(
        &self,
        _build: &biocage_core::image::FolderBuild,
        id: String,
    ) -> Result<String> {
        // The build tagged it; a short id from the output: the engine knows the full one.
        match self.docker.inspect_image(&id).await {
            Ok(img) => Ok(img.id.unwrap_or(id)),
            Err(e) => Err(Error::engine(
                ENGINE,
                format!("inspecting built image {id}"),
                e,
            )),
        }
    }
}

impl std::fmt::Debug for DockerEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerEngine")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}
