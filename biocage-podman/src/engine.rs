//! [`PodmanEngine`]: the engine calls of [`biocage_core::Engine`] on Podman's libpod API
//! (podman-api). Only calls that work on Podman 4 and 5 alike are used: create, start,
//! exec create/start, list, delete. Images are in `image.rs`, create options in
//! `create.rs`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use biocage_core::image::FolderBuild;
use biocage_core::limits::{Capabilities, GVISOR_RUNTIME};
use biocage_core::{
    AgentStreams, BuildChunk, Connect, ContainerEntry, ContainerSpec, ContainerState, Engine,
    EngineRuntime, Error, ExecFrame, IdMap, ImageDetails, Result,
};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use podman_api::conn::TtyChunk;
use podman_api::opts::{ContainerListFilter, ContainerListOpts, ExecCreateOpts, ExecStartOpts};
use podman_api::Podman;
use tokio_util::compat::FuturesAsyncWriteCompatExt;

use crate::create::create_opts;
use crate::socket::{discover_socket, start_hint};
use crate::ENGINE;

/// Sandboxes on a Podman service: the runtime callers use.
pub type PodmanRuntime = EngineRuntime<PodmanEngine>;

/// A connected Podman API service (rootless or rootful).
pub struct PodmanEngine {
    podman: Podman,
    /// The same socket's Docker-compatible endpoint, for builds (see `image.rs`).
    compat: bollard::Docker,
    socket: PathBuf,
    /// The service mounts tmpfs volumes with a file limit (found by `capabilities`).
    inode_volumes: AtomicBool,
}

pub(crate) fn is_not_found(e: &podman_api::Error) -> bool {
    matches!(e, podman_api::Error::Fault { code, .. } if code.as_u16() == 404)
}

fn failed(action: impl Into<String>, e: impl Into<biocage_core::error::BoxError>) -> Error {
    Error::engine(ENGINE, action, e)
}

#[async_trait]
impl Connect for PodmanEngine {
    /// Connects to the first Podman API socket that answers (see [`discover_socket`]).
    async fn connect() -> Result<Self> {
        let candidates = discover_socket();
        let mut tried = Vec::new();
        for path in &candidates {
            match Self::connect_to(path).await {
                Ok(engine) => return Ok(engine),
                Err(Error::EngineUnreachable { reason, .. }) => {
                    tried.push(format!("{} ({reason})", path.display()));
                }
                Err(e) => tried.push(format!("{} ({e})", path.display())),
            }
        }
        Err(Error::EngineUnreachable {
            engine: ENGINE.to_string(),
            endpoint: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            reason: format!("no Podman API socket answered: {}", tried.join("; ")),
            hint: start_hint(),
        })
    }
}

impl PodmanEngine {
    /// Connects to the Podman API socket at `path`.
    pub async fn connect_to(path: &Path) -> Result<Self> {
        let unreachable = |reason: String| Error::EngineUnreachable {
            engine: ENGINE.to_string(),
            endpoint: path.display().to_string(),
            reason,
            hint: start_hint(),
        };
        if !path.exists() {
            return Err(unreachable("no such socket".into()));
        }
        let podman = Podman::unix(path);
        podman
            .ping()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let socket = path.display().to_string();
        let compat = bollard::Docker::connect_with_unix(&socket, 3600, &crate::image::COMPAT_API)
            .map_err(|e| unreachable(e.to_string()))?;
        tracing::debug!(%socket, "connected to podman");
        Ok(PodmanEngine {
            podman,
            compat,
            socket: path.to_path_buf(),
            inode_volumes: AtomicBool::new(false),
        })
    }

    /// The socket in use.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

/// The state of one container by id, from the list call (inspect breaks on Podman 5).
async fn container_state(podman: &Podman, id: &str) -> Result<Option<String>> {
    let opts = ContainerListOpts::builder()
        .all(true)
        .filter([ContainerListFilter::Id(id.to_string().into())])
        .build();
    let list = podman
        .containers()
        .list(&opts)
        .await
        .map_err(|e| failed("listing containers", e))?;
    Ok(list.into_iter().next().and_then(|c| c.state))
}

/// The engine's user-namespace mapping (empty when it runs without one).
fn id_map(ranges: Option<&[podman_api::models::IdMap]>) -> Vec<IdMap> {
    ranges
        .unwrap_or_default()
        .iter()
        .filter_map(|r| {
            Some(IdMap {
                container_id: u32::try_from(r.container_id?).ok()?,
                host_id: u32::try_from(r.host_id?).ok()?,
                size: u32::try_from(r.size?).ok()?,
            })
        })
        .collect()
}

#[async_trait]
impl Engine for PodmanEngine {
    fn name(&self) -> &'static str {
        ENGINE
    }

    fn endpoint(&self) -> String {
        self.socket.display().to_string()
    }

    fn build_command(&self) -> &'static str {
        "biocage --runtime podman image build (or: sudo scripts/setup.sh podman)"
    }

    async fn capabilities(&self) -> Result<Capabilities> {
        let version = self
            .podman
            .version()
            .await
            .map_err(|e| failed("reading the version", e))?;
        let info = self
            .podman
            .info()
            .await
            .map_err(|e| failed("reading engine info", e))?;
        let host = info.host;
        let maps = host.as_ref().and_then(|h| h.id_mappings.as_ref());
        let uid_map = id_map(maps.and_then(|m| m.uidmap.as_deref()));
        let gid_map = id_map(maps.and_then(|m| m.gidmap.as_deref()));
        let rootless = host
            .as_ref()
            .and_then(|h| h.security.as_ref())
            .and_then(|s| s.rootless)
            .unwrap_or(false);
        let cgroup_version = match host.as_ref().and_then(|h| h.cgroup_version.as_deref()) {
            Some("v2") => 2,
            Some("v1") => 1,
            _ => 0,
        };
        let inode_volumes = crate::volumes::probe(&self.podman).await;
        self.inode_volumes.store(inode_volumes, Ordering::Relaxed);
        let gvisor = crate::gvisor::probe(&self.podman).await;
        Ok(Capabilities {
            engine: ENGINE.to_string(),
            engine_version: version.version.unwrap_or_default(),
            api_version: version.api_version.unwrap_or_default(),
            rootless,
            cgroup_version,
            // Rootless Podman on cgroup v1 ignores memory, pids and cpu limits.
            cgroup_limits: !(rootless && cgroup_version == 1),
            // Podman refuses the tmpfs nr_inodes option; tmpfs volumes take it (Podman 5).
            tmpfs_inode_limit: inode_volumes,
            uid_map,
            gid_map,
            // Registered by scripts/setup.sh (containers.conf), runsc's flags in a wrapper.
            gvisor_runtime: gvisor.then(|| GVISOR_RUNTIME.to_string()),
        })
    }

    async fn create(&self, spec: &ContainerSpec, cgroup_limits: bool) -> Result<String> {
        let volumes = if self.inode_volumes.load(Ordering::Relaxed) {
            crate::volumes::create(&self.podman, spec).await?
        } else {
            Vec::new()
        };
        let opts = create_opts(spec, cgroup_limits, volumes)?;
        match self.podman.containers().create(&opts).await {
            Ok(created) => Ok(created.id),
            Err(e) => {
                crate::volumes::remove_of(&self.podman, &spec.name).await;
                Err(failed(format!("creating container {}", spec.name), e))
            }
        }
    }

    async fn start(&self, id: &str) -> Result<()> {
        self.podman
            .containers()
            .get(id)
            .start(None)
            .await
            .map_err(|e| failed(format!("starting container {id}"), e))
    }

    async fn exec_attached(&self, id: &str, user: &str, argv: Vec<String>) -> Result<AgentStreams> {
        let opts = ExecCreateOpts::builder()
            .command(argv)
            .attach_stdin(true)
            .attach_stdout(true)
            .attach_stderr(true)
            .tty(false)
            .user(podman_api::opts::UserOpt::User(user.to_string()))
            .build();
        let exec = self
            .podman
            .containers()
            .get(id)
            .create_exec(&opts)
            .await
            .map_err(|e| failed(format!("starting the agent in {id}"), e))?;
        let mux = exec
            .start(&ExecStartOpts::builder().detach(false).build())
            .await
            .map_err(|e| failed(format!("attaching to the agent in {id}"), e))?
            .ok_or_else(|| failed("attaching to the agent", "the exec started detached"))?;
        let (reader, writer) = mux.split();
        let frames = reader.map(|chunk| {
            chunk.map(|c| match c {
                TtyChunk::StdOut(bytes) => ExecFrame::Stdout(bytes.into()),
                TtyChunk::StdErr(bytes) => ExecFrame::Stderr(bytes.into()),
                TtyChunk::StdIn(_) => ExecFrame::Other,
            })
        });
        Ok(AgentStreams::from_frames(
            frames,
            Box::pin(writer.compat_write()),
            id.to_string(),
        ))
    }

    async fn state(&self, id: &str) -> Result<Option<ContainerState>> {
        Ok(container_state(&self.podman, id)
            .await?
            .map(|s| ContainerState::from_engine(&s)))
    }

    async fn remove(&self, name: &str) -> Result<()> {
        let removed = match self.podman.containers().get(name).remove().await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            // Being removed right now (auto-removal after it stopped).
            Err(podman_api::Error::Fault { code, .. }) if code.as_u16() == 409 => Ok(()),
            Err(e) => Err(failed(format!("removing container {name}"), e)),
        };
        if removed.is_ok() && self.inode_volumes.load(Ordering::Relaxed) {
            crate::volumes::remove_of(&self.podman, name).await;
        }
        removed
    }

    async fn remove_leftovers(&self, live_names: &[String]) -> Result<usize> {
        crate::volumes::remove_leftovers(&self.podman, live_names).await
    }

    async fn list(&self, label: &str, value: &str) -> Result<Vec<ContainerEntry>> {
        let opts = ContainerListOpts::builder()
            .all(true)
            .filter([ContainerListFilter::LabelKeyVal(
                label.to_string(),
                value.to_string(),
            )])
            .build();
        let list = self
            .podman
            .containers()
            .list(&opts)
            .await
            .map_err(|e| failed("listing sandboxes", e))?;
        Ok(list
            .into_iter()
            .map(|c| ContainerEntry {
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .unwrap_or_default(),
                image: c.image.unwrap_or_default(),
                state: ContainerState::from_engine(&c.state.unwrap_or_default()),
                labels: c.labels.unwrap_or_default(),
            })
            .collect())
    }

    async fn image_details(&self, image: &str) -> Result<Option<ImageDetails>> {
        crate::image::image_details(&self.podman, image).await
    }

    async fn list_images(&self, label: &str) -> Result<Vec<ImageDetails>> {
        crate::image::list_images(&self.podman, label).await
    }

    fn build_stream<'a>(
        &'a self,
        build: &FolderBuild,
        context: Vec<u8>,
    ) -> BoxStream<'a, Result<BuildChunk>> {
        crate::image::build_stream(&self.compat, build, context)
    }

    async fn finish_build(&self, build: &FolderBuild, id: String) -> Result<String> {
        crate::image::tag(&self.podman, build, id).await
    }
}

impl std::fmt::Debug for PodmanEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodmanEngine")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}
