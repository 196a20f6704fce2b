//! [`EngineRuntime`]: the one [`SandboxRuntime`], built on any [`Engine`]. What is the
//! same for every engine lives here once: the capabilities cache, sessions, listing and
//! removing managed sandboxes, orphan collection and the image-build loop.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::sync::OnceCell;

use crate::config::SandboxConfig;
use crate::container::{AgentStreams, ContainerIdentity, ContainerOps};
use crate::engine::{BuildChunk, Connect, Engine};
use crate::error::{Error, Result};
use crate::image::{
    BuildEvent, BuildOptions, BuiltImage, FolderBuild, ImageDetails, ImageEngine, Progress,
    LABEL_IMAGE,
};
use crate::limits::Capabilities;
use crate::runtime::{SandboxRuntime, SandboxSummary, Session};
use crate::session::Relaunch;
use crate::spec::{ContainerSpec, LABEL_MANAGED};

/// Sandboxes on the engine `E`: Docker and Podman are `EngineRuntime<DockerEngine>` and
/// `EngineRuntime<PodmanEngine>`; a new backend implements [`Engine`] and nothing else.
pub struct EngineRuntime<E: Engine> {
    engine: Arc<E>,
    caps: OnceCell<Capabilities>,
}

impl<E: Engine> EngineRuntime<E> {
    /// The runtime for a connected engine.
    pub fn new(engine: E) -> Self {
        EngineRuntime {
            engine: Arc::new(engine),
            caps: OnceCell::new(),
        }
    }

    /// The engine, for what the runtime does not wrap.
    pub fn engine(&self) -> &E {
        &self.engine
    }

    /// Where the engine was reached (socket or URL).
    pub fn endpoint(&self) -> String {
        self.engine.endpoint()
    }

    /// Creates and starts the container `spec` describes; on failure nothing is left.
    pub(crate) async fn launch(
        &self,
        spec: &ContainerSpec,
        cgroup_limits: bool,
    ) -> Result<Arc<dyn ContainerOps>> {
        launch_on(self.engine.clone(), spec, cgroup_limits).await
    }

    /// What makes a fresh sandbox for a session whose supervisor was lost: the same
    /// spec, under the name `NAME-GENERATION`.
    pub(crate) fn relauncher(&self, spec: &ContainerSpec, cgroup_limits: bool) -> Relaunch {
        let (engine, spec) = (self.engine.clone(), spec.clone());
        Arc::new(move |generation| {
            let (engine, mut spec) = (engine.clone(), spec.clone());
            spec.name = format!("{}-{generation}", spec.name);
            Box::pin(async move { launch_on(engine, &spec, cgroup_limits).await })
        })
    }
}

/// Creates and starts the container `spec` describes on `engine`; on failure nothing is
/// left.
async fn launch_on<E: Engine>(
    engine: Arc<E>,
    spec: &ContainerSpec,
    cgroup_limits: bool,
) -> Result<Arc<dyn ContainerOps>> {
    let id = engine.create(spec, cgroup_limits).await?;
    if let Err(e) = engine.start(&id).await {
        if let Err(rm) = engine.remove(&spec.name).await {
            tracing::warn!("removing {} after a failed start: {rm}", spec.name);
        }
        return Err(e);
    }
    Ok(Arc::new(EngineContainer {
        ident: ContainerIdentity::of(engine.name(), id, spec),
        engine,
    }))
}

impl<E: Connect> EngineRuntime<E> {
    /// Connects to the engine where its users expect it (see [`Connect`]).
    pub async fn connect() -> Result<Self> {
        Ok(EngineRuntime::new(E::connect().await?))
    }
}

impl<E: Engine> std::fmt::Debug for EngineRuntime<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineRuntime")
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<E: Engine> SandboxRuntime for EngineRuntime<E> {
    fn name(&self) -> &str {
        self.engine.name()
    }

    async fn capabilities(&self) -> Result<Capabilities> {
        self.caps
            .get_or_try_init(|| self.engine.capabilities())
            .await
            .cloned()
    }

    async fn image_exists(&self, image: &str) -> Result<bool> {
        Ok(self.engine.image_details(image).await?.is_some())
    }

    async fn image_details(&self, image: &str) -> Result<Option<ImageDetails>> {
        self.engine.image_details(image).await
    }

    async fn list_images(&self) -> Result<Vec<ImageDetails>> {
        self.engine.list_images(LABEL_IMAGE).await
    }

    async fn build_image(
        &self,
        opts: &BuildOptions,
        progress: &mut Progress<'_>,
    ) -> Result<BuiltImage> {
        crate::image::build(self, self, opts, progress).await
    }

    async fn create_session(&self, config: &SandboxConfig) -> Result<Box<dyn Session>> {
        crate::launch::launch_session(self, config, self.engine.build_command()).await
    }

    async fn list_sandboxes(&self) -> Result<Vec<SandboxSummary>> {
        Ok(self
            .engine
            .list(LABEL_MANAGED, "true")
            .await?
            .into_iter()
            .map(SandboxSummary::from_entry)
            .collect())
    }

    async fn gc(&self) -> Result<Vec<SandboxSummary>> {
        let removed = crate::runtime::gc_sandboxes(self).await?;
        let live: Vec<String> = self
            .list_sandboxes()
            .await?
            .into_iter()
            .map(|s| s.name)
            .collect();
        let leftovers = self.engine.remove_leftovers(&live).await?;
        if leftovers > 0 {
            tracing::info!("removed {leftovers} leftovers of sandboxes that are gone");
        }
        Ok(removed)
    }

    async fn remove_sandbox(&self, id: &str) -> Result<()> {
        // Only BioCage's own containers: a name or id of anything else is "not found".
        let managed = self.list_sandboxes().await?;
        let found = managed
            .iter()
            .find(|s| s.container_id == id || s.name == id)
            .or_else(|| {
                let mut prefixed = managed
                    .iter()
                    .filter(|s| id.len() >= 4 && s.container_id.starts_with(id));
                match (prefixed.next(), prefixed.next()) {
                    (Some(one), None) => Some(one),
                    _ => None,
                }
            });
        match found {
            Some(s) => self.engine.remove(&s.name).await,
            None => Err(Error::NotFound {
                engine: self.engine.name().to_string(),
                what: "sandbox",
                name: id.to_string(),
            }),
        }
    }
}

/// Packs `dir` as a build context; times, owners and modes are normalized, so that the
/// engine's cache sees only names and content.
fn tar_folder(dir: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Deterministic);
    builder.append_dir_all(".", dir)?;
    builder.into_inner()
}

/// True for a full image id on a line of its own (how Podman ends a build).
fn is_image_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What a build's output says about the image it made.
#[derive(Debug, Default)]
struct BuiltId {
    id: Option<String>,
    /// The id is the short one of Docker's "Successfully built ..." line.
    short: bool,
}

impl BuiltId {
    /// Reads one chunk: its lines go to `progress`, ids are kept; a failed step gives
    /// the engine's message.
    fn read(
        &mut self,
        chunk: BuildChunk,
        progress: &mut Progress<'_>,
    ) -> std::result::Result<(), String> {
        if let Some(err) = chunk.error {
            return Err(err);
        }
        for l in chunk.text.as_deref().unwrap_or_default().lines() {
            let l = l.trim_end();
            if is_image_id(l) {
                self.id = Some(l.to_string());
                self.short = false;
            } else if !l.is_empty() {
                progress(BuildEvent::Line(l));
                if let Some(short) = l.strip_prefix("Successfully built ") {
                    if self.id.is_none() {
                        self.id = Some(short.trim().to_string());
                        self.short = true;
                    }
                }
            }
        }
        if let Some(full) = chunk.image_id {
            self.id = Some(full);
            self.short = false;
        }
        Ok(())
    }
}

#[async_trait]
impl<E: Engine> ImageEngine for EngineRuntime<E> {
    async fn build_folder(
        &self,
        build: &FolderBuild,
        progress: &mut Progress<'_>,
    ) -> Result<String> {
        let dir = build.context.clone();
        let context = tokio::task::spawn_blocking(move || tar_folder(&dir))
            .await
            .map_err(|e| Error::Agent(format!("packing the build context: {e}")))?
            .map_err(|e| Error::io(format!("packing {}", build.context.display()), e))?;
        let action = match &build.tag {
            Some(tag) => format!("building {tag}"),
            None => "building an image".to_string(),
        };
        let failed = |why: String| Error::engine(self.engine.name(), &action, why);
        let mut built = BuiltId::default();
        let mut stream = self.engine.build_stream(build, context);
        while let Some(chunk) = stream.next().await {
            built.read(chunk?, progress).map_err(failed)?;
        }
        drop(stream);
        let id = built
            .id
            .ok_or_else(|| failed("the build ended without naming an image".into()))?;
        self.engine.finish_build(build, id).await
    }
}

/// One sandbox container of an [`EngineRuntime`], as sessions drive it.
struct EngineContainer<E: Engine> {
    engine: Arc<E>,
    ident: ContainerIdentity,
}

#[async_trait]
impl<E: Engine> ContainerOps for EngineContainer<E> {
    fn identity(&self) -> &ContainerIdentity {
        &self.ident
    }

    async fn exec_attached(&self, argv: Vec<String>) -> Result<AgentStreams> {
        self.engine
            .exec_attached(&self.ident.id, &self.ident.user, argv)
            .await
    }

    async fn is_running(&self) -> Result<bool> {
        Ok(
            self.engine.state(&self.ident.id).await?
                == Some(crate::engine::ContainerState::Running),
        )
    }

    async fn remove(&self) -> Result<()> {
        self.engine.remove(&self.ident.name).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(built: &mut BuiltId, text: &str) {
        let chunk = BuildChunk {
            text: Some(text.into()),
            ..Default::default()
        };
        built.read(chunk, &mut |_| {}).unwrap();
    }

    #[test]
    fn build_output_names_the_image() {
        let mut docker = BuiltId::default();
        read(
            &mut docker,
            "Step 1/2 : FROM x\nSuccessfully built 3bfb0b328a41\n",
        );
        assert_eq!(docker.id.as_deref(), Some("3bfb0b328a41"));
        assert!(docker.short);
        let mut podman = BuiltId::default();
        let full = "a".repeat(64);
        read(&mut podman, &format!("STEP 1/2: FROM x\n{full}\n"));
        assert_eq!(podman.id.as_deref(), Some(full.as_str()));
        assert!(!podman.short);
        let failed = BuildChunk {
            error: Some("step 2 failed".into()),
            ..Default::default()
        };
        assert_eq!(
            BuiltId::default().read(failed, &mut |_| {}),
            Err("step 2 failed".to_string())
        );
        assert!(!is_image_id("Successfully built abc"));
    }
}
