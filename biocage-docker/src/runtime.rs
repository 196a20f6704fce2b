//! [`DockerRuntime`]: the [`SandboxRuntime`] for Docker Engine.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use biocage_core::limits::Capabilities;
use biocage_core::{
    launch_session, BuildOptions, ContainerIdentity, ContainerLauncher, ContainerOps,
    ContainerSpec, Error, Result, SandboxConfig, SandboxRuntime, SandboxSummary, Session,
    LABEL_MANAGED,
};
use bollard::query_parameters::{CreateContainerOptions, ListContainersOptions};
use bollard::Docker;
use tokio::sync::OnceCell;

use crate::body::create_body;
use crate::container::{is_not_found, remove_container, DockerContainer};
use crate::ENGINE;

/// Sandboxes on a Docker Engine.
pub struct DockerRuntime {
    docker: Docker,
    endpoint: String,
    caps: OnceCell<Capabilities>,
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

impl DockerRuntime {
    /// Connects to the engine at `DOCKER_HOST` (default: the local socket) and
    /// negotiates the API version down to what it speaks.
    pub async fn connect() -> Result<Self> {
        let endpoint = endpoint();
        let docker = Docker::connect_with_defaults().map_err(|e| unreachable(&endpoint, e))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| unreachable(&endpoint, e))?;
        docker.ping().await.map_err(|e| unreachable(&endpoint, e))?;
        tracing::debug!(%endpoint, api = %docker.client_version(), "connected to docker");
        let rt = DockerRuntime {
            docker,
            endpoint,
            caps: OnceCell::new(),
        };
        biocage_core::reap_orphans(&rt).await;
        Ok(rt)
    }

    /// The bollard client, for what this crate does not wrap.
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// Where the engine was reached.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

#[async_trait]
impl ContainerLauncher for DockerRuntime {
    async fn launch(
        &self,
        spec: &ContainerSpec,
        cgroup_limits: bool,
    ) -> Result<Arc<dyn ContainerOps>> {
        let opts = CreateContainerOptions {
            name: Some(spec.name.clone()),
            platform: String::new(),
        };
        let created = self
            .docker
            .create_container(Some(opts), create_body(spec, cgroup_limits)?)
            .await
            .map_err(|e| Error::engine(ENGINE, format!("creating container {}", spec.name), e))?;
        if let Err(e) = self.docker.start_container(&created.id, None).await {
            let _ = remove_container(&self.docker, &created.id).await;
            return Err(Error::engine(
                ENGINE,
                format!("starting container {}", spec.name),
                e,
            ));
        }
        Ok(Arc::new(DockerContainer {
            docker: self.docker.clone(),
            ident: ContainerIdentity::of(ENGINE, created.id, spec),
        }))
    }
}

#[async_trait]
impl SandboxRuntime for DockerRuntime {
    fn name(&self) -> &str {
        ENGINE
    }

    async fn capabilities(&self) -> Result<Capabilities> {
        self.caps
            .get_or_try_init(|| async {
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
                })
            })
            .await
            .cloned()
    }

    async fn image_exists(&self, image: &str) -> Result<bool> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(Error::engine(
                ENGINE,
                format!("looking up image {image}"),
                e,
            )),
        }
    }

    async fn image_details(&self, image: &str) -> Result<Option<biocage_core::ImageDetails>> {
        crate::image::image_details(&self.docker, image).await
    }

    async fn list_images(&self) -> Result<Vec<biocage_core::ImageDetails>> {
        crate::image::list_images(&self.docker).await
    }

    async fn build_image(
        &self,
        opts: &BuildOptions,
        progress: &mut biocage_core::Progress<'_>,
    ) -> Result<biocage_core::BuiltImage> {
        crate::image::build_image(self, opts, progress).await
    }

    async fn create_session(&self, config: &SandboxConfig) -> Result<Box<dyn Session>> {
        launch_session(
            self,
            self,
            config,
            "biocage image build (or: sudo scripts/setup.sh docker)",
        )
        .await
    }

    async fn list_sandboxes(&self) -> Result<Vec<SandboxSummary>> {
        let mut filters = HashMap::new();
        filters.insert("label".to_string(), vec![format!("{LABEL_MANAGED}=true")]);
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
            .map(|c| {
                SandboxSummary::from_labels(
                    c.id.unwrap_or_default(),
                    c.names.and_then(|n| n.first().cloned()).unwrap_or_default(),
                    c.image.unwrap_or_default(),
                    c.state.map(|s| s.to_string()).unwrap_or_default(),
                    &c.labels.unwrap_or_default(),
                )
            })
            .collect())
    }

    async fn remove_sandbox(&self, id: &str) -> Result<()> {
        remove_container(&self.docker, id).await
    }
}

impl std::fmt::Debug for DockerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerRuntime").finish_non_exhaustive()
    }
}
