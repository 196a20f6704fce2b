//! [`PodmanRuntime`]: the [`SandboxRuntime`] for rootless Podman.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use biocage_core::limits::Capabilities;
use biocage_core::{
    launch_session, BuildOptions, ContainerIdentity, ContainerLauncher, ContainerOps,
    ContainerSpec, Error, IdMap, Result, SandboxConfig, SandboxRuntime, SandboxSummary, Session,
    LABEL_MANAGED,
};
use podman_api::opts::{ContainerListFilter, ContainerListOpts};
use podman_api::Podman;
use tokio::sync::OnceCell;

use crate::container::{remove_container, PodmanContainer};
use crate::create::create_opts;
use crate::socket::{discover_socket, start_hint};
use crate::ENGINE;

/// Sandboxes on a (rootless) Podman service.
pub struct PodmanRuntime {
    podman: Podman,
    socket: PathBuf,
    caps: OnceCell<Capabilities>,
}

impl PodmanRuntime {
    /// Connects to the first Podman API socket that answers (see [`discover_socket`]).
    pub async fn connect() -> Result<Self> {
        let candidates = discover_socket();
        let mut tried = Vec::new();
        for path in &candidates {
            match Self::connect_to(path).await {
                Ok(rt) => {
                    biocage_core::reap_orphans(&rt).await;
                    return Ok(rt);
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

    /// Connects to the Podman API socket at `path`.
    pub async fn connect_to(path: &Path) -> std::result::Result<Self, String> {
        if !path.exists() {
            return Err("no such socket".into());
        }
        let podman = Podman::unix(path);
        podman.ping().await.map_err(|e| e.to_string())?;
        tracing::debug!(socket = %path.display(), "connected to podman");
        Ok(PodmanRuntime {
            podman,
            socket: path.to_path_buf(),
            caps: OnceCell::new(),
        })
    }

    /// The socket in use.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn engine_error(&self, action: &str, e: impl Into<biocage_core::error::BoxError>) -> Error {
        Error::engine(ENGINE, action, e)
    }
}

#[async_trait]
impl ContainerLauncher for PodmanRuntime {
    async fn launch(
        &self,
        spec: &ContainerSpec,
        cgroup_limits: bool,
    ) -> Result<Arc<dyn ContainerOps>> {
        let created = self
            .podman
            .containers()
            .create(&create_opts(spec, cgroup_limits)?)
            .await
            .map_err(|e| self.engine_error(&format!("creating container {}", spec.name), e))?;
        let id = created.id;
        if let Err(e) = self.podman.containers().get(&id).start(None).await {
            let _ = remove_container(&self.podman, &id).await;
            return Err(self.engine_error(&format!("starting container {}", spec.name), e));
        }
        Ok(Arc::new(PodmanContainer {
            podman: self.podman.clone(),
            ident: ContainerIdentity::of(ENGINE, id, spec),
        }))
    }
}

#[async_trait]
impl SandboxRuntime for PodmanRuntime {
    fn name(&self) -> &str {
        ENGINE
    }

    async fn capabilities(&self) -> Result<Capabilities> {
        self.caps
            .get_or_try_init(|| async {
                let version = self
                    .podman
                    .version()
                    .await
                    .map_err(|e| self.engine_error("reading the version", e))?;
                let info = self
                    .podman
                    .info()
                    .await
                    .map_err(|e| self.engine_error("reading engine info", e))?;
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
                Ok(Capabilities {
                    engine: ENGINE.to_string(),
                    engine_version: version.version.unwrap_or_default(),
                    api_version: version.api_version.unwrap_or_default(),
                    rootless,
                    cgroup_version,
                    // Rootless Podman on cgroup v1 ignores memory, pids and cpu limits.
                    cgroup_limits: !(rootless && cgroup_version == 1),
                    // Podman refuses the tmpfs nr_inodes option.
                    tmpfs_inode_limit: false,
                    uid_map,
                    gid_map,
                })
            })
            .await
            .cloned()
    }

    async fn image_exists(&self, image: &str) -> Result<bool> {
        self.podman
            .images()
            .get(image)
            .exists()
            .await
            .map_err(|e| self.engine_error(&format!("looking up image {image}"), e))
    }

    async fn image_details(&self, image: &str) -> Result<Option<biocage_core::ImageDetails>> {
        crate::image::image_details(&self.podman, image).await
    }

    async fn list_images(&self) -> Result<Vec<biocage_core::ImageDetails>> {
        crate::image::list_images(&self.podman).await
    }

    async fn build_image(
        &self,
        opts: &BuildOptions,
        progress: &mut biocage_core::Progress<'_>,
    ) -> Result<biocage_core::BuiltImage> {
        crate::image::build_image(self, &self.podman, opts, progress).await
    }

    async fn create_session(&self, config: &SandboxConfig) -> Result<Box<dyn Session>> {
        launch_session(
            self,
            self,
            config,
            "biocage --runtime podman image build (or: sudo scripts/setup.sh podman)",
        )
        .await
    }

    async fn list_sandboxes(&self) -> Result<Vec<SandboxSummary>> {
        let opts = ContainerListOpts::builder()
            .all(true)
            .filter([ContainerListFilter::LabelKeyVal(
                LABEL_MANAGED.to_string(),
                "true".to_string(),
            )])
            .build();
        let list = self
            .podman
            .containers()
            .list(&opts)
            .await
            .map_err(|e| self.engine_error("listing sandboxes", e))?;
        Ok(list
            .into_iter()
            .map(|c| {
                SandboxSummary::from_labels(
                    c.id.unwrap_or_default(),
                    c.names.and_then(|n| n.first().cloned()).unwrap_or_default(),
                    c.image.unwrap_or_default(),
                    c.state.unwrap_or_default(),
                    &c.labels.unwrap_or_default(),
                )
            })
            .collect())
    }

    async fn remove_sandbox(&self, id: &str) -> Result<()> {
        remove_container(&self.podman, id).await
    }
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

impl std::fmt::Debug for PodmanRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodmanRuntime")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}
