//! The configurations the suite runs against: an engine, how it is reached, and the
//! isolation every session of it gets. `BIOCAGE_TEST_ENGINES` names them.

use std::path::Path;

use async_trait::async_trait;
use biocage_core::image::{BuildOptions, BuiltImage, ImageDetails, Progress};
use biocage_core::{
    Capabilities, Isolation, LimitPlan, Result, SandboxConfig, SandboxRuntime, SandboxSummary,
    Session,
};
use biocage_podman::{PodmanEngine, PodmanRuntime};

/// Every configuration of the matrix, as `BIOCAGE_TEST_ENGINES` spells them: an engine,
/// and `+gvisor` where every session of it runs under gVisor's runsc.
pub const CONFIGURATIONS: [&str; 8] = [
    "docker",
    "docker+gvisor",
    "podman",
    "podman+gvisor",
    "podman-rootful",
    "podman-rootful+gvisor",
    "podman5",
    "podman5-rootful",
];

/// Where `scripts/setup.sh podman-rootful` puts the host's rootful Podman service's socket.
pub const PODMAN_ROOTFUL: &str = "/run/biocage-podman-rootful/podman.sock";
/// Where `scripts/podman5.sh up` puts the rootless Podman 5 service's socket.
pub const PODMAN5_ROOTLESS: &str = "/run/biocage-podman5/rootless/podman.sock";
/// Where `scripts/podman5.sh up` puts the rootful Podman 5 service's socket.
pub const PODMAN5_ROOTFUL: &str = "/run/biocage-podman5/rootful/podman.sock";

/// The folder `scripts/podman5.sh` shares with its services at the same path: host
/// folders that sessions bind (exposures readable by anyone are bound, not copied) must
/// be there to exist for a nested engine.
pub const PODMAN5_SHARED: &str = "/tmp/biocage-podman5-shared";

/// Prepares this process for the configurations `selected` names: with a nested Podman 5
/// among them, temporary folders are made where its services see them. Call first thing
/// in `main`, before any thread starts (it sets `TMPDIR`).
pub fn prepare(selected: &str) {
    if selected.split(',').any(|c| c.trim().starts_with("podman5"))
        && Path::new(PODMAN5_SHARED).is_dir()
    {
        std::env::set_var("TMPDIR", PODMAN5_SHARED);
    }
}

/// Connects to the configuration `name`.
pub async fn connect(name: &str) -> Result<Box<dyn SandboxRuntime>> {
    let Some(&name) = CONFIGURATIONS.iter().find(|c| **c == name) else {
        panic!(
            "unknown configuration {name:?} in the test matrix (known: {})",
            CONFIGURATIONS.join(", ")
        )
    };
    let (engine, isolation) = match name.strip_suffix("+gvisor") {
        Some(engine) => (engine, Isolation::Gvisor),
        None => (name, Isolation::Container),
    };
    let inner: Box<dyn SandboxRuntime> = match engine {
        "docker" => Box::new(biocage_docker::DockerRuntime::connect().await?),
        "podman" => Box::new(PodmanRuntime::connect().await?),
        _ => {
            let socket = match engine {
                "podman-rootful" => PODMAN_ROOTFUL,
                "podman5" => PODMAN5_ROOTLESS,
                _ => PODMAN5_ROOTFUL,
            };
            Box::new(PodmanRuntime::new(
                PodmanEngine::connect_to(Path::new(socket)).await?,
            ))
        }
    };
    if name == "docker" || name == "podman" {
        // The plain engines as they are: cases may ask them for any isolation.
        return Ok(inner);
    }
    Ok(Box::new(Configured {
        name,
        isolation,
        inner,
    }))
}

/// A runtime under another name whose sessions all get one isolation.
struct Configured {
    name: &'static str,
    isolation: Isolation,
    inner: Box<dyn SandboxRuntime>,
}

impl Configured {
    fn config(&self, config: &SandboxConfig) -> SandboxConfig {
        let mut config = config.clone();
        config.isolation = self.isolation;
        config
    }
}

#[async_trait]
impl SandboxRuntime for Configured {
    fn name(&self) -> &str {
        self.name
    }
    async fn capabilities(&self) -> Result<Capabilities> {
        self.inner.capabilities().await
    }
    async fn limit_plan(&self, config: &SandboxConfig) -> Result<LimitPlan> {
        self.inner.limit_plan(&self.config(config)).await
    }
    async fn image_exists(&self, image: &str) -> Result<bool> {
        self.inner.image_exists(image).await
    }
    async fn image_details(&self, image: &str) -> Result<Option<ImageDetails>> {
        self.inner.image_details(image).await
    }
    async fn list_images(&self) -> Result<Vec<ImageDetails>> {
        self.inner.list_images().await
    }
    async fn build_image(
        &self,
        opts: &BuildOptions,
        progress: &mut Progress<'_>,
    ) -> Result<BuiltImage> {
        self.inner.build_image(opts, progress).await
    }
    async fn create_session(&self, config: &SandboxConfig) -> Result<Box<dyn Session>> {
        self.inner.create_session(&self.config(config)).await
    }
    async fn list_sandboxes(&self) -> Result<Vec<SandboxSummary>> {
        self.inner.list_sandboxes().await
    }
    async fn remove_sandbox(&self, id: &str) -> Result<()> {
        self.inner.remove_sandbox(id).await
    }
}

impl std::fmt::Debug for Configured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Configured")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}
