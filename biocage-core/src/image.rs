//! Building sandbox images, whatever the engine.
//!
//! Two kinds of build:
//! - the **recipe** (python_docker/ or any folder with a Dockerfile), as it is;
//! - a **custom image**: the packages of a requirements file or of a pyproject.toml's
//!   `[project] dependencies`, added to a base image (`biocage:latest` by default). Its
//!   build context is generated: a small Dockerfile, the requirements under a
//!   content-hashed name and a folder of wheels, nothing else, so the engine installs
//!   exactly what was asked and its layer cache is keyed on that content. With
//!   `offline`, a throwaway sandbox with network downloads the wheels for the base's
//!   Python and platform (it asks the base which it has), and the container installs
//!   them without an index. pip never runs on the host, and only wheels are installed
//!   unless the build allows sources.
//!
//! Every build ends by running a session on the new image, which checks that each
//! package asked for is installed, and records what it found in the image's labels
//! (`org.biocage.*`): `biocage image ls`, `doctor` and [`crate::Session::info`] read
//! them back.

mod context;
mod probe;
mod requirements;
mod status;
mod wheels;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::config::DEFAULT_IMAGE;
use crate::error::{Error, Result};
use crate::runtime::SandboxRuntime;

pub use probe::PythonTarget;
pub use requirements::{normalize_name, Requested, Requirements};
pub use status::BuildStatus;
pub use wheels::wheel_cache_dir;

use context::{CustomContext, Recipe};
use status::BuildLog;

/// Label on every BioCage image: "sandbox" (the recipe) or "custom".
pub const LABEL_IMAGE: &str = "org.biocage.image";
/// Label: hash of the recipe files (python_docker/build.sh sets it).
pub const LABEL_RECIPE: &str = "org.biocage.recipe";
/// Label: the base image a custom image was built on, as named.
pub const LABEL_BASE: &str = "org.biocage.base";
/// Label: the id of that base image.
pub const LABEL_BASE_ID: &str = "org.biocage.base-id";
/// Label: SHA-256 of the requirements as installed ([`Requirements::digest`]).
pub const LABEL_REQUIREMENTS: &str = "org.biocage.requirements";
/// Label: the requirement lines asked for, as a JSON array.
pub const LABEL_REQUESTED: &str = "org.biocage.requested";
/// Label: JSON object of each package asked for (in this image and the BioCage images
/// it was built on) and its installed version.
pub const LABEL_PACKAGES: &str = "org.biocage.packages";
/// Label: the image's Python version.
pub const LABEL_PYTHON: &str = "org.biocage.python";

/// A build of a sandbox image: the recipe in `context`, or, when `requirements` or
/// `pyproject` is set, a custom image that adds those packages to `base_image`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BuildOptions {
    /// Build context of a recipe build: a folder with a Dockerfile.
    pub context: PathBuf,
    /// Tag of the result.
    pub tag: String,
    /// Recipe builds: the BASE_IMAGE build argument (any image with python3; the
    /// Dockerfile's default if None). Custom images: the image the packages are added
    /// to (`biocage:latest` if None).
    pub base_image: Option<String>,
    /// A requirements file whose packages make a custom image.
    pub requirements: Option<PathBuf>,
    /// A pyproject.toml whose `[project] dependencies` make a custom image.
    pub pyproject: Option<PathBuf>,
    /// Custom images: a sandbox downloads the wheels (for the base's Python and
    /// platform) and the container installs them without a package index.
    pub offline: bool,
    /// Custom images: folders of wheels to install from. Offline, nothing else is used
    /// (no index, not even on the host); online, they are offered to pip besides the index.
    pub wheels: Vec<PathBuf>,
    /// Build every step anew (and, offline, resolve the wheels against the index
    /// rather than the host's wheel cache).
    pub no_cache: bool,
    /// Custom images: allow direct references (`name @ URL`) and source
    /// distributions. Off by default: only wheels are installed, so no package's code
    /// runs during the build at all. On, sources are fetched and built inside the
    /// build's container (never on the host).
    pub allow_source: bool,
}

impl BuildOptions {
    /// A build of the recipe in `context` tagged `tag`, with the Dockerfile's defaults.
    pub fn new(context: impl Into<PathBuf>, tag: impl Into<String>) -> Self {
        BuildOptions {
            context: context.into(),
            tag: tag.into(),
            base_image: None,
            requirements: None,
            pyproject: None,
            offline: false,
            wheels: Vec::new(),
            no_cache: false,
            allow_source: false,
        }
    }

    /// A custom image tagged `tag`: the packages of the requirements file at
    /// `requirements` added to `biocage:latest` (see the public fields for the rest).
    pub fn custom(tag: impl Into<String>, requirements: impl Into<PathBuf>) -> Self {
        let mut opts = BuildOptions::new(PathBuf::new(), tag);
        opts.requirements = Some(requirements.into());
        opts
    }

    /// True when this builds a custom image (requirements or pyproject given).
    pub fn is_custom(&self) -> bool {
        self.requirements.is_some() || self.pyproject.is_some()
    }

    /// The image custom packages are added to.
    pub fn base(&self) -> &str {
        self.base_image.as_deref().unwrap_or(DEFAULT_IMAGE)
    }

    /// The packages of a custom image, read from its file; None for a recipe build.
    pub fn packages(&self) -> Result<Option<Requirements>> {
        let reqs = match (&self.requirements, &self.pyproject) {
            (Some(r), None) => Requirements::from_requirements_file(r)?,
            (None, Some(p)) => Requirements::from_pyproject(p)?,
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => return Err(Error::InvalidConfig {
                field: "requirements",
                value: "requirements and pyproject".into(),
                reason: "give one of them: the packages of a requirements file, or the dependencies of a pyproject.toml".into(),
            }),
        };
        if let (Some(first), false) = (reqs.direct.first(), self.allow_source) {
            return Err(Error::InvalidConfig {
                field: "requirements",
                value: reqs.source.clone(),
                reason: format!(
                    "`{first}` is a direct reference (a URL or path, {} in all); only packages from an index are installed unless the build allows sources (--allow-source: fetched and built inside the build's container, never on the host)",
                    reqs.direct.len()
                ),
            });
        }
        Ok(Some(reqs))
    }

    /// Checks what can be checked before building: the context has a Dockerfile (recipe
    /// builds), the package file exists, the tag is not the base, the wheel folders exist.
    pub fn validate(&self) -> Result<()> {
        if !self.is_custom() {
            if !self.context.join("Dockerfile").is_file() {
                return Err(Error::InvalidConfig {
                    field: "build context",
                    value: self.context.display().to_string(),
                    reason: "no Dockerfile there; point at the python_docker folder".into(),
                });
            }
            if self.offline {
                return Err(Error::InvalidConfig {
                    field: "build",
                    value: "offline".into(),
                    reason: "offline builds of the recipe run CONTEXT/build.sh --offline (`biocage image build --offline` does); offline custom images need a requirements file or a pyproject.toml".into(),
                });
            }
            return Ok(());
        }
        for (field, file) in [
            ("requirements", &self.requirements),
            ("pyproject", &self.pyproject),
        ] {
            if let Some(f) = file {
                if !f.is_file() {
                    return Err(Error::InvalidConfig {
                        field,
                        value: f.display().to_string(),
                        reason: "no such file".into(),
                    });
                }
            }
        }
        self.packages()?;
        if same_image_name(&self.tag, self.base()) {
            return Err(Error::InvalidConfig {
                field: "tag",
                value: self.tag.clone(),
                reason: format!(
                    "it is the base image the packages are added to; give the new image a name of its own (e.g. {}-custom:latest)",
                    repository(self.base())
                ),
            });
        }
        for w in &self.wheels {
            if !w.is_dir() {
                return Err(Error::InvalidConfig {
                    field: "wheels",
                    value: w.display().to_string(),
                    reason: "no such folder; give a folder of .whl files".into(),
                });
            }
        }
        Ok(())
    }
}

/// "biocage" of "localhost/biocage:latest".
fn repository(name: &str) -> &str {
    let last = name.rsplit('/').next().unwrap_or(name);
    last.split(':').next().unwrap_or(last)
}

/// Whether two image names mean the same image (`:latest` and Podman's `localhost/`
/// implied).
fn same_image_name(a: &str, b: &str) -> bool {
    fn canon(n: &str) -> String {
        let n = n.strip_prefix("localhost/").unwrap_or(n);
        let n = n.strip_prefix("docker.io/library/").unwrap_or(n);
        let last = n.rsplit('/').next().unwrap_or(n);
        if last.contains(':') || last.contains('@') {
            n.to_string()
        } else {
            format!("{n}:latest")
        }
    }
    canon(a) == canon(b)
}

/// One thing a build reports as it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildEvent<'a> {
    /// A phase of the build, in BioCage's words ("downloading wheels ... on the host").
    Phase(&'a str),
    /// A line of output of the engine or of pip (as printed; it may quote build steps).
    Line(&'a str),
}

/// Receives each [`BuildEvent`] (an alias: trait signatures stay readable).
pub type Progress<'a> = dyn for<'e> FnMut(BuildEvent<'e>) + Send + 'a;

/// An image as the engine holds it, with what BioCage recorded in its labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ImageDetails {
    /// Image id ("sha256:...").
    pub id: String,
    /// Names it is tagged with.
    pub tags: Vec<String>,
    /// Size in bytes, as the engine counts it.
    pub size: u64,
    /// The configured user ("" for root).
    pub user: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

impl ImageDetails {
    /// Details from what an engine reports.
    pub fn new(
        id: impl Into<String>,
        tags: Vec<String>,
        size: u64,
        user: impl Into<String>,
        labels: BTreeMap<String, String>,
    ) -> Self {
        ImageDetails {
            id: id.into(),
            tags,
            size,
            user: user.into(),
            labels,
        }
    }

    /// "sandbox" (the recipe), "custom", or None for an image BioCage did not build.
    pub fn kind(&self) -> Option<&str> {
        self.labels.get(LABEL_IMAGE).map(String::as_str)
    }

    /// The Python version recorded at build time.
    pub fn python(&self) -> Option<&str> {
        self.labels.get(LABEL_PYTHON).map(String::as_str)
    }

    /// The base a custom image was built on, as named.
    pub fn base(&self) -> Option<&str> {
        self.labels.get(LABEL_BASE).map(String::as_str)
    }

    /// Each package asked for and its installed version, as recorded at build time.
    pub fn packages(&self) -> BTreeMap<String, String> {
        self.labels
            .get(LABEL_PACKAGES)
            .and_then(|p| serde_json::from_str(p).ok())
            .unwrap_or_default()
    }

    /// The requirement lines this image's own build asked for.
    pub fn requested(&self) -> Vec<String> {
        self.labels
            .get(LABEL_REQUESTED)
            .and_then(|p| serde_json::from_str(p).ok())
            .unwrap_or_default()
    }

    /// How it was made, in one line: "biocage:latest + tabulate, toolz>=1" for a custom
    /// image, "python_docker recipe 0b2974eb6ed0d940" for the default one.
    pub fn recipe(&self) -> String {
        let requested = self.requested().join(", ");
        let on = self.base().map(|b| format!(" on {b}")).unwrap_or_default();
        match (self.kind(), self.labels.get(LABEL_RECIPE)) {
            (Some("custom"), _) => format!("{} + {requested}", self.base().unwrap_or("?")),
            (Some("sandbox"), _) if !requested.is_empty() => {
                format!("recipe{on}: {requested}")
            }
            (_, Some(recipe)) => format!("python_docker recipe {recipe}"),
            _ => "unknown".to_string(),
        }
    }
}

/// What a build made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BuiltImage {
    /// The tag given.
    pub tag: String,
    /// The image's id.
    pub image_id: String,
    /// Its size in bytes.
    pub size: u64,
    /// Engine name.
    pub engine: String,
    /// The base a custom image was built on (None for a recipe build).
    pub base: Option<String>,
    /// The image's Python version.
    pub python: String,
    /// SHA-256 of the requirements installed (custom images).
    pub requirements: Option<String>,
    /// Each package asked for and the version installed.
    pub packages: BTreeMap<String, String>,
    /// Every distribution the build added or changed, with its version.
    pub installed: BTreeMap<String, String>,
    /// Whether the engine reused its cache for every step (nothing was installed anew).
    pub cached: bool,
    /// Whether the wheels came from the host (offline build).
    pub offline: bool,
}

/// One build as an engine runs it: a folder with a Dockerfile at its top.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FolderBuild {
    /// The context folder.
    pub context: PathBuf,
    /// Tag of the result (untagged if None).
    pub tag: Option<String>,
    /// Build arguments.
    pub build_args: BTreeMap<String, String>,
    /// Build every step anew.
    pub no_cache: bool,
}

impl FolderBuild {
    /// A build of the folder `context`.
    pub fn new(context: impl Into<PathBuf>) -> Self {
        FolderBuild {
            context: context.into(),
            ..Default::default()
        }
    }
}

/// What an engine backend does for builds; [`build`] does the rest.
#[async_trait]
pub trait ImageEngine: Send + Sync {
    /// Builds `build`, passing every output line to `progress`; returns the new image's
    /// id. A failed step is an error carrying the engine's message.
    async fn build_folder(
        &self,
        build: &FolderBuild,
        progress: &mut Progress<'_>,
    ) -> Result<String>;
}

/// Gives a build error that does not name its image yet the tag being built.
fn for_image(e: Error, tag: &str) -> Error {
    match e {
        Error::BuildFailed { image, reason } if image.is_empty() => Error::BuildFailed {
            image: tag.to_string(),
            reason,
        },
        other => other,
    }
}

/// "sha256:HEX" for an id with or without the prefix.
fn full_id(id: &str) -> String {
    let id = id.trim();
    if id.starts_with("sha256:") {
        id.to_string()
    } else {
        format!("sha256:{id}")
    }
}

/// Runs one engine build, keeping its output in `log` and showing it.
async fn run_build(
    engine: &dyn ImageEngine,
    build: &FolderBuild,
    log: &mut BuildLog,
    progress: &mut Progress<'_>,
) -> Result<String> {
    let mut tee = |ev: BuildEvent<'_>| {
        if let BuildEvent::Line(l) = ev {
            log.record(l);
        }
        progress(ev);
    };
    engine
        .build_folder(build, &mut tee)
        .await
        .map(|id| full_id(&id))
}

/// Builds what `opts` describe on `rt`, whose engine side is `engine` (the backends pass
/// themselves), reporting progress; see the module documentation.
pub async fn build(
    rt: &dyn SandboxRuntime,
    engine: &dyn ImageEngine,
    opts: &BuildOptions,
    progress: &mut Progress<'_>,
) -> Result<BuiltImage> {
    opts.validate()?;
    let result = match opts.packages()? {
        Some(reqs) => build_custom(rt, engine, opts, &reqs, progress).await,
        None => build_recipe(rt, engine, opts, progress).await,
    };
    result.map_err(|e| for_image(e, &opts.tag))
}

async fn build_recipe(
    rt: &dyn SandboxRuntime,
    engine: &dyn ImageEngine,
    opts: &BuildOptions,
    progress: &mut Progress<'_>,
) -> Result<BuiltImage> {
    let mut build = FolderBuild::new(&opts.context);
    build.no_cache = opts.no_cache;
    if let Some(base) = &opts.base_image {
        // A base the engine holds is named by its id: no short-name resolution, and the
        // cache follows the base's content.
        let base = match rt.image_details(base).await? {
            Some(d) if d.id.starts_with("sha256:") => d.id,
            _ => base.clone(),
        };
        build.build_args.insert("BASE_IMAGE".to_string(), base);
    }
    progress(BuildEvent::Phase(&format!(
        "building the recipe in {}",
        opts.context.display()
    )));
    let mut log = BuildLog::default();
    let id = run_build(engine, &build, &mut log, progress)
        .await
        .map_err(|e| failed_build(e, &log, &opts.tag, &opts.context.display().to_string()))?;
    let requested =
        Requirements::from_requirements_file(&opts.context.join("requirements.txt")).ok();
    let base = opts.base_image.clone();
    finish(
        rt,
        engine,
        Finish {
            opts,
            stage_id: &id,
            base_name: base.as_deref(),
            base: None,
            reqs: requested.as_ref(),
            kind: "sandbox",
            cached: log.all_cached(),
        },
        progress,
    )
    .await
}

/// Turns an engine's build error into a [`Error::BuildFailed`] that quotes pip.
fn failed_build(e: Error, log: &BuildLog, tag: &str, what: &str) -> Error {
    match e {
        Error::Engine { source, .. } => {
            let message = source.to_string();
            let reason = if log.pip_failed() {
                let hint = if log.index_unreachable() {
                    "; the build could not reach the package index: build with --offline (a sandbox with network downloads the wheels) or give a folder of wheels with --wheels"
                } else {
                    ""
                };
                format!(
                    "pip could not install the packages of {what}: {}{hint}",
                    log.failure_text(),
                )
            } else {
                format!("{} (last output: {})", message.trim(), log.failure_text())
            };
            Error::BuildFailed {
                image: tag.to_string(),
                reason,
            }
        }
        other => other,
    }
}

async fn build_custom(
    rt: &dyn SandboxRuntime,
    engine: &dyn ImageEngine,
    opts: &BuildOptions,
    reqs: &Requirements,
    progress: &mut Progress<'_>,
) -> Result<BuiltImage> {
    let base_name = opts.base();
    let base = rt
        .image_details(base_name)
        .await?
        .ok_or_else(|| Error::ImageMissing {
            image: base_name.to_string(),
            engine: rt.name().to_string(),
            build_command: format!(
                "biocage --runtime {0} image build` (the default image) or `{0} pull {base_name}",
                rt.name()
            ),
        })?;
    progress(BuildEvent::Phase(&format!(
        "asking {base_name} which Python it has"
    )));
    let target = PythonTarget::of_image(rt, &base.id).await?;
    let ctx = CustomContext::new()?;
    let digest = reqs.digest();
    let req_name = format!("requirements-{}.txt", &digest[..16]);
    ctx.write(&req_name, &reqs.text())?;
    let cache = wheel_cache_dir();
    // Folders of wheels go into the context as they are: pip resolves them inside the
    // build's container, never on the host.
    for dir in &opts.wheels {
        let found = wheels::wheels_in(dir)
            .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        for w in found {
            ctx.add_wheel(&w)?;
        }
    }
    // pip runs in a sandbox on the base (or, when it has no pip, on the default image).
    let pip_image = if target.pip {
        base.id.clone()
    } else {
        DEFAULT_IMAGE.to_string()
    };
    if opts.offline && opts.wheels.is_empty() {
        let mut text = reqs.text();
        if !target.pip {
            text.push_str("pip\n");
        }
        let job = wheels::Download {
            image: &pip_image,
            requirements: &text,
            target: &target,
            cache: &cache,
            fresh: opts.no_cache,
            stage: &ctx.wheels(),
        };
        wheels::download(rt, &job, progress).await?;
    }
    if !target.pip && wheels::find_pip_wheel(&[ctx.wheels()]).is_none() {
        match wheels::find_pip_wheel(std::slice::from_ref(&cache)) {
            Some(w) => ctx.add_wheel(&w)?,
            None => {
                let job = wheels::Download {
                    image: &pip_image,
                    requirements: "pip\n",
                    target: &target,
                    cache: &cache,
                    fresh: false,
                    stage: &ctx.wheels(),
                };
                wheels::download(rt, &job, progress)
                    .await
                .map_err(|e| Error::BuildFailed {
                    image: opts.tag.clone(),
                    reason: format!(
                        "{base_name} has no pip, and no pip wheel could be fetched to run ({e}); give a folder holding a pip wheel with --wheels"
                    ),
                })?;
            }
        }
    }
    let pip_wheel = if target.pip {
        None
    } else {
        wheels::find_pip_wheel(&[ctx.wheels()])
    };
    let pip_wheel_name = pip_wheel
        .as_deref()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .map(str::to_string);
    let has_wheels = std::fs::read_dir(ctx.wheels())
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    let dockerfile = Recipe {
        base_id: &base.id,
        base_user: &base.user,
        requirements_file: &req_name,
        offline: opts.offline,
        pip_wheel: pip_wheel_name.as_deref(),
        has_wheels,
        only_binary: !opts.allow_source,
    }
    .dockerfile()?;
    ctx.write("Dockerfile", &dockerfile)?;
    ctx.pin_times()?;
    let names: Vec<String> = reqs.requested().into_iter().map(|r| r.name).collect();
    progress(BuildEvent::Phase(&format!(
        "installing {} on {base_name}{}",
        names.join(", "),
        if opts.offline {
            " from the host's wheels"
        } else {
            " from the package index"
        }
    )));
    let mut build = FolderBuild::new(ctx.path());
    build.no_cache = opts.no_cache;
    let mut log = BuildLog::default();
    let id = run_build(engine, &build, &mut log, progress)
        .await
        .map_err(|e| failed_build(e, &log, &opts.tag, &reqs.source))?;
    drop(ctx);
    finish(
        rt,
        engine,
        Finish {
            opts,
            stage_id: &id,
            base_name: Some(base_name),
            base: Some((&base, &target)),
            reqs: Some(reqs),
            kind: "custom",
            cached: log.all_cached(),
        },
        progress,
    )
    .await
}

/// The last part of every build: what the first stage made and what to record.
struct Finish<'a> {
    opts: &'a BuildOptions,
    /// Id of the image the install made (untagged).
    stage_id: &'a str,
    base_name: Option<&'a str>,
    /// The base image and what its Python said (custom images).
    base: Option<(&'a ImageDetails, &'a PythonTarget)>,
    reqs: Option<&'a Requirements>,
    kind: &'static str,
    cached: bool,
}

/// `FROM image` and one LABEL instruction with `labels` in a fixed order (engines that
/// take labels as a map may apply them in any order, which defeats their cache).
fn label_dockerfile(image: &str, labels: &BTreeMap<String, String>) -> String {
    fn quote(s: &str) -> String {
        let mut q = String::with_capacity(s.len() + 2);
        q.push('"');
        for c in s.chars() {
            match c {
                '"' | '\\' | '$' => {
                    q.push('\\');
                    q.push(c);
                }
                '\n' | '\r' => q.push(' '),
                c => q.push(c),
            }
        }
        q.push('"');
        q
    }
    let mut f = format!("FROM {image}\nLABEL");
    let pairs: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{}={}", quote(k), quote(v)))
        .collect();
    f.push(' ');
    f.push_str(&pairs.join(" \\\n      "));
    f.push('\n');
    f
}

/// Checks the new image in a session (every package asked for is installed), records
/// what it found in labels (a second, one-instruction build) and tags the result.
async fn finish(
    rt: &dyn SandboxRuntime,
    engine: &dyn ImageEngine,
    f: Finish<'_>,
    progress: &mut Progress<'_>,
) -> Result<BuiltImage> {
    let tag = &f.opts.tag;
    progress(BuildEvent::Phase(&format!("checking {tag} in a session")));
    let now = PythonTarget::of_image(rt, f.stage_id).await?;
    let mut packages = f.base.map(|(b, _)| b.packages()).unwrap_or_default();
    let mut missing = Vec::new();
    for r in f.reqs.map(Requirements::requested).unwrap_or_default() {
        match now.packages.get(&r.name) {
            Some(v) => {
                packages.insert(r.name.clone(), v.clone());
            }
            None if r.conditional => {}
            None => missing.push(r.name),
        }
    }
    if !missing.is_empty() {
        return Err(Error::BuildFailed {
            image: tag.clone(),
            reason: format!(
                "the install step ended, yet {} is not installed in the image; check the requirements",
                missing.join(", ")
            ),
        });
    }
    let installed: BTreeMap<String, String> = match f.base {
        Some((_, before)) => now
            .packages
            .iter()
            .filter(|(n, v)| before.packages.get(*n) != Some(*v))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect(),
        None => now.packages.clone(),
    };
    let mut labels = BTreeMap::new();
    labels.insert(LABEL_IMAGE.to_string(), f.kind.to_string());
    labels.insert(LABEL_PYTHON.to_string(), now.version.clone());
    labels.insert(
        LABEL_PACKAGES.to_string(),
        serde_json::to_string(&packages).unwrap_or_default(),
    );
    if let Some(r) = f.reqs {
        labels.insert(LABEL_REQUIREMENTS.to_string(), r.digest());
        labels.insert(
            LABEL_REQUESTED.to_string(),
            serde_json::to_string(&r.lines).unwrap_or_default(),
        );
    }
    if let Some(b) = f.base_name {
        labels.insert(LABEL_BASE.to_string(), b.to_string());
    }
    if let Some((b, _)) = f.base {
        labels.insert(LABEL_BASE_ID.to_string(), b.id.clone());
    }
    progress(BuildEvent::Phase(&format!("recording what {tag} holds")));
    let ctx = CustomContext::new()?;
    ctx.write("Dockerfile", &label_dockerfile(f.stage_id, &labels))?;
    ctx.pin_times()?;
    let mut build = FolderBuild::new(ctx.path());
    build.tag = Some(tag.clone());
    let mut log = BuildLog::default();
    let id = run_build(engine, &build, &mut log, progress)
        .await
        .map_err(|e| failed_build(e, &log, tag, "the labels"))?;
    let size = rt.image_details(&id).await?.map(|d| d.size).unwrap_or(0);
    Ok(BuiltImage {
        tag: tag.clone(),
        image_id: id,
        size,
        engine: rt.name().to_string(),
        base: f.base.map(|_| f.opts.base().to_string()),
        python: now.version,
        requirements: f.reqs.map(Requirements::digest),
        packages,
        installed,
        cached: f.cached,
        offline: f.opts.offline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_builds_need_a_tag_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let req = dir.path().join("req.txt");
        std::fs::write(&req, "tabulate\n").unwrap();
        let mut opts = BuildOptions::custom("biocage:latest", &req);
        let e = opts.validate().unwrap_err().to_string();
        assert!(e.contains("biocage-custom:latest"), "{e}");
        opts.tag = "localhost/biocage".into();
        assert!(opts.validate().is_err());
        opts.tag = "biocage-tab:latest".into();
        opts.validate().unwrap();
        opts.pyproject = Some(req.clone());
        assert!(opts.validate().is_err());
        opts.pyproject = None;
        opts.wheels = vec![dir.path().join("nope")];
        assert!(opts.validate().is_err());
    }

    #[test]
    fn recipe_is_read_from_labels() {
        let mut labels = BTreeMap::new();
        labels.insert(LABEL_IMAGE.to_string(), "custom".to_string());
        labels.insert(LABEL_BASE.to_string(), "biocage:latest".to_string());
        labels.insert(
            LABEL_REQUESTED.to_string(),
            "[\"tabulate\",\"toolz>=1\"]".to_string(),
        );
        labels.insert(
            LABEL_PACKAGES.to_string(),
            "{\"tabulate\":\"0.10.0\"}".to_string(),
        );
        let d = ImageDetails::new("sha256:x", vec![], 1, "", labels);
        assert_eq!(d.recipe(), "biocage:latest + tabulate, toolz>=1");
        assert_eq!(
            d.packages().get("tabulate").map(String::as_str),
            Some("0.10.0")
        );
        assert_eq!(d.kind(), Some("custom"));
        let mut labels = BTreeMap::new();
        labels.insert(LABEL_RECIPE.to_string(), "0b29".to_string());
        let d = ImageDetails::new("sha256:y", vec![], 1, "", labels);
        assert_eq!(d.recipe(), "python_docker recipe 0b29");
    }

    #[test]
    fn labels_are_written_in_order_and_quoted() {
        let mut labels = BTreeMap::new();
        labels.insert("org.b".to_string(), "{\"x\":\"$HOME\\n\"}".to_string());
        labels.insert("org.a".to_string(), "1".to_string());
        let f = label_dockerfile("sha256:abc", &labels);
        assert_eq!(
            f,
            "FROM sha256:abc\nLABEL \"org.a\"=\"1\" \\\n      \"org.b\"=\"{\\\"x\\\":\\\"\\$HOME\\\\n\\\"}\"\n"
        );
    }
}
