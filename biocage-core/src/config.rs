//! Sandbox configuration: safe defaults, loosened only explicitly.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::size::parse_size;

/// The sandbox user unless told otherwise (the image's `sandbox` user).
pub const DEFAULT_USER: &str = "1000:1000";

/// The image sessions use unless told otherwise.
pub const DEFAULT_IMAGE: &str = "biocage:latest";

/// Longest time limit a run may have.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// A run time limit from seconds: above 0, at most [`MAX_TIMEOUT`].
pub fn timeout_from_secs(secs: f64) -> Result<Duration> {
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if !d.is_zero() && d <= MAX_TIMEOUT => Ok(d),
        _ => Err(Error::InvalidConfig {
            field: "timeout",
            value: secs.to_string(),
            reason: "must be a number of seconds above 0 and at most 86400 (24 hours)".into(),
        }),
    }
}

/// How a host path is exposed in the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExposureMode {
    /// Sandbox code can read, not write.
    ReadOnly,
    /// Sandbox code can read and write; writes land on the host.
    ReadWrite,
}

/// A host file or folder made visible inside the sandbox at a chosen path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exposure {
    /// Path on the host (file or folder).
    pub host: PathBuf,
    /// Absolute path inside the sandbox.
    pub container: String,
    /// Read-only or read-write.
    pub mode: ExposureMode,
}

/// Everything that decides how a sandbox is made. Build one with
/// What stands between sandbox code and the host's kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Isolation {
    /// A container: namespaces, cgroups, seccomp and the agent's own filter, on the
    /// host's kernel.
    #[default]
    Container,
    /// gVisor: the container runs under the engine's `runsc` runtime, whose user-space
    /// kernel answers the sandbox's system calls; the host kernel sees only gVisor's.
    Gvisor,
}

impl Isolation {
    /// Its name, as the CLI and reports spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Container => "container",
            Isolation::Gvisor => "gvisor",
        }
    }
}

impl std::fmt::Display for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// [`SandboxConfig::builder`]; [`SandboxConfig::default`] is the hardened default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SandboxConfig {
    /// Image with python3 (3.8+) in it.
    pub image: String,
    /// Memory limit in bytes; swap is never allowed on top of it.
    pub memory_bytes: u64,
    /// CPU limit in cores (may be fractional).
    pub cpus: f64,
    /// Most processes and threads the sandbox may have at once.
    pub pids_limit: u32,
    /// Network access; off unless asked for.
    pub network: bool,
    /// Container, or gVisor's user-space kernel in between (see [`Isolation`]).
    #[serde(default)]
    pub isolation: Isolation,
    /// Default time limit of one run.
    pub timeout: Duration,
    /// How long a run may ignore the interrupt sent at its time limit before it is killed.
    pub interrupt_grace: Duration,
    /// Most bytes kept of each of stdout and stderr per run.
    pub output_cap: usize,
    /// Writable working directory (a tmpfs) where runs start.
    pub workspace: String,
    /// Size of the workspace tmpfs in bytes.
    pub workspace_bytes: u64,
    /// Size of the /tmp tmpfs in bytes.
    pub tmp_bytes: u64,
    /// Size of /dev/shm in bytes.
    pub shm_bytes: u64,
    /// User (uid:gid) that runs the agent and user code; never root. On engines with a
    /// user namespace (rootless), the default is replaced by a uid of the session's own,
    /// so that per-uid kernel limits (RLIMIT_NPROC) never join two sessions.
    pub user: String,
    /// Extra environment variables for user code.
    pub env: BTreeMap<String, String>,
    /// Host files and folders exposed in the sandbox.
    pub exposures: Vec<Exposure>,
    /// Return figures left open by matplotlib as PNG images in the result.
    pub capture_figures: bool,
    /// Start even if a limit cannot be enforced on this backend (reported as unenforced).
    pub allow_unenforced_limits: bool,
    /// Largest file moved by `read_file` / `write_file`.
    pub max_transfer_bytes: u64,
    /// How long a container outlives a host that vanished without closing it.
    pub orphan_grace: Duration,
    /// Largest code of one run, in bytes (UTF-8).
    pub max_code_bytes: usize,
    /// Size of each read-write exposure inside the sandbox (a tmpfs): what sandbox code
    /// writes there beyond it fails with ENOSPC, and never reaches the host's disk.
    pub rw_exposure_bytes: u64,
    /// Most files and folders in each read-write exposure.
    pub rw_exposure_files: u32,
    /// Allow a read-write exposure of a host system folder (`/`, `/etc`, `/usr`, ...,
    /// an engine's data-root), which sandbox code could then rewrite. Off: refused.
    pub force_system_rw: bool,
}

/// Largest memory, tmpfs or exposure size accepted (1 TiB): engines read values that
/// wrap as "unlimited", so every size has an upper bound.
pub const MAX_SIZE: u64 = 1 << 40;

/// Deepest folder nesting mirrored back from a read-write exposure.
pub const RW_MAX_DEPTH: u32 = 64;

/// Longest relative path (bytes) mirrored back from a read-write exposure.
pub const RW_MAX_PATH: usize = 1024;

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            image: DEFAULT_IMAGE.to_string(),
            memory_bytes: 512 << 20,
            cpus: 1.0,
            pids_limit: 256,
            network: false,
            isolation: Isolation::Container,
            timeout: Duration::from_secs(30),
            interrupt_grace: Duration::from_secs(2),
            output_cap: 1 << 20,
            workspace: "/workspace".to_string(),
            workspace_bytes: 256 << 20,
            tmp_bytes: 128 << 20,
            shm_bytes: 64 << 20,
            user: DEFAULT_USER.to_string(),
            env: BTreeMap::new(),
            exposures: Vec::new(),
            capture_figures: true,
            allow_unenforced_limits: false,
            max_transfer_bytes: 64 << 20,
            orphan_grace: Duration::from_secs(10),
            max_code_bytes: 16 << 20,
            rw_exposure_bytes: 256 << 20,
            rw_exposure_files: 10_000,
            force_system_rw: false,
        }
    }
}

impl SandboxConfig {
    /// A builder starting from the hardened defaults.
    pub fn builder() -> SandboxConfigBuilder {
        SandboxConfigBuilder {
            config: SandboxConfig::default(),
            errors: Vec::new(),
        }
    }

    /// Checks every value; the error names the first bad one and what is accepted.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &'static str, value: String, reason: &str| {
            Err(Error::InvalidConfig {
                field,
                value,
                reason: reason.to_string(),
            })
        };
        if self.image.trim().is_empty() {
            return bad("image", self.image.clone(), "an image name is required");
        }
        if self.memory_bytes < 32 << 20 || self.memory_bytes > MAX_SIZE {
            return bad(
                "memory",
                self.memory_bytes.to_string(),
                "must be between 32m (Python itself needs that much) and 1t",
            );
        }
        for (field, value, least) in [
            ("workspace size", self.workspace_bytes, 1u64 << 20),
            ("tmp size", self.tmp_bytes, 1 << 20),
            ("shm size", self.shm_bytes, 1 << 20),
            ("read-write exposure size", self.rw_exposure_bytes, 1 << 20),
        ] {
            if value < least || value > MAX_SIZE {
                return bad(field, value.to_string(), "must be between 1m and 1t");
            }
        }
        if self.max_transfer_bytes < 1024 || self.max_transfer_bytes > 1 << 30 {
            return bad(
                "max transfer",
                self.max_transfer_bytes.to_string(),
                "must be between 1 KiB and 1 GiB",
            );
        }
        if self.max_code_bytes < 1024 || self.max_code_bytes > 256 << 20 {
            return bad(
                "max code",
                self.max_code_bytes.to_string(),
                "must be between 1 KiB and 256 MiB",
            );
        }
        if !(16..=1_000_000).contains(&self.rw_exposure_files) {
            return bad(
                "read-write exposure files",
                self.rw_exposure_files.to_string(),
                "must be between 16 and 1000000",
            );
        }
        if self.pids_limit > 1 << 22 {
            return bad(
                "pids",
                self.pids_limit.to_string(),
                "must be at most 4194304 (the kernel's own maximum)",
            );
        }
        if !(self.cpus.is_finite() && self.cpus >= 0.01 && self.cpus <= 1024.0) {
            return bad(
                "cpus",
                self.cpus.to_string(),
                "must be between 0.01 and 1024",
            );
        }
        if self.pids_limit < 16 {
            return bad(
                "pids",
                self.pids_limit.to_string(),
                "must be at least 16: the agent needs a few processes",
            );
        }
        if self.timeout.is_zero() || self.timeout > MAX_TIMEOUT {
            return bad(
                "timeout",
                format!("{:?}", self.timeout),
                "must be more than 0 and at most 24 hours",
            );
        }
        if self.output_cap < 1024 || self.output_cap > 256 << 20 {
            return bad(
                "output cap",
                self.output_cap.to_string(),
                "must be between 1 KiB and 256 MiB",
            );
        }
        if !is_absolute_clean(&self.workspace) {
            return bad(
                "workspace",
                self.workspace.clone(),
                "must be an absolute path without '..'",
            );
        }
        // Numbers only: "00", "+0" or a name that the image maps to 0 would otherwise
        // pass a check of the text.
        let ids: Vec<Option<u32>> = self.user.split(':').map(|x| x.parse().ok()).collect();
        let numeric = matches!(ids.as_slice(), [Some(_)] | [Some(_), Some(_)])
            && self
                .user
                .split(':')
                .all(|x| x.bytes().all(|b| b.is_ascii_digit()));
        if !numeric {
            return bad(
                "user",
                self.user.clone(),
                "give the sandbox user as numbers, uid or uid:gid (such as 1000:1000); names are not resolved",
            );
        }
        if ids.contains(&Some(0)) {
            return bad(
                "user",
                self.user.clone(),
                "sandbox code never runs as root (uid or gid 0); use a uid:gid such as 1000:1000",
            );
        }
        for key in self.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return bad(
                    "env",
                    key.clone(),
                    "names must be non-empty, without '=' or NUL",
                );
            }
        }
        validate_exposures(self)
    }
}

/// Builds a [`SandboxConfig`]; values are checked by [`SandboxConfigBuilder::build`].
#[derive(Debug)]
pub struct SandboxConfigBuilder {
    config: SandboxConfig,
    errors: Vec<Error>,
}

impl SandboxConfigBuilder {
    /// The image to run.
    pub fn image(mut self, image: impl Into<String>) -> Self {
        self.config.image = image.into();
        self
    }
    /// Memory limit in bytes.
    pub fn memory_bytes(mut self, bytes: u64) -> Self {
        self.config.memory_bytes = bytes;
        self
    }
    /// Memory limit as text ("512m", "4g").
    pub fn memory(mut self, text: &str) -> Self {
        match parse_size("memory", text) {
            Ok(b) => self.config.memory_bytes = b,
            Err(e) => self.errors.push(e),
        }
        self
    }
    /// CPU limit in cores.
    pub fn cpus(mut self, cpus: f64) -> Self {
        self.config.cpus = cpus;
        self
    }
    /// Process/thread limit.
    pub fn pids_limit(mut self, pids: u32) -> Self {
        self.config.pids_limit = pids;
        self
    }
    /// Allow network access (off by default).
    pub fn network(mut self, on: bool) -> Self {
        self.config.network = on;
        self
    }
    /// Default per-run time limit.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.config.timeout = t;
        self
    }
    /// Grace period between the interrupt and the kill at a time limit.
    pub fn interrupt_grace(mut self, t: Duration) -> Self {
        self.config.interrupt_grace = t;
        self
    }
    /// Per-stream output cap in bytes.
    pub fn output_cap(mut self, bytes: usize) -> Self {
        self.config.output_cap = bytes;
        self
    }
    /// Size of the workspace tmpfs.
    pub fn workspace_bytes(mut self, bytes: u64) -> Self {
        self.config.workspace_bytes = bytes;
        self
    }
    /// Size of /tmp.
    pub fn tmp_bytes(mut self, bytes: u64) -> Self {
        self.config.tmp_bytes = bytes;
        self
    }
    /// Sets one environment variable for user code.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.env.insert(key.into(), value.into());
        self
    }
    /// Exposes a host file or folder read-only at `container`.
    pub fn expose(mut self, host: impl Into<PathBuf>, container: impl Into<String>) -> Self {
        self.config.exposures.push(Exposure {
            host: host.into(),
            container: container.into(),
            mode: ExposureMode::ReadOnly,
        });
        self
    }
    /// Exposes a host folder read-write at `container`.
    pub fn expose_rw(mut self, host: impl Into<PathBuf>, container: impl Into<String>) -> Self {
        self.config.exposures.push(Exposure {
            host: host.into(),
            container: container.into(),
            mode: ExposureMode::ReadWrite,
        });
        self
    }
    /// Return matplotlib figures as PNGs (on by default).
    pub fn capture_figures(mut self, on: bool) -> Self {
        self.config.capture_figures = on;
        self
    }
    /// Container or gVisor isolation.
    pub fn isolation(mut self, isolation: Isolation) -> Self {
        self.config.isolation = isolation;
        self
    }
    /// Start even where a limit cannot be enforced.
    pub fn allow_unenforced_limits(mut self, on: bool) -> Self {
        self.config.allow_unenforced_limits = on;
        self
    }
    /// Largest file moved by read_file / write_file.
    pub fn max_transfer_bytes(mut self, bytes: u64) -> Self {
        self.config.max_transfer_bytes = bytes;
        self
    }
    /// Largest code of one run, in bytes.
    pub fn max_code_bytes(mut self, bytes: usize) -> Self {
        self.config.max_code_bytes = bytes;
        self
    }
    /// Size of each read-write exposure inside the sandbox.
    pub fn rw_exposure_bytes(mut self, bytes: u64) -> Self {
        self.config.rw_exposure_bytes = bytes;
        self
    }
    /// See [`SandboxConfig::force_system_rw`].
    pub fn force_system_rw(mut self, on: bool) -> Self {
        self.config.force_system_rw = on;
        self
    }

    /// Most files and folders in each read-write exposure.
    pub fn rw_exposure_files(mut self, files: u32) -> Self {
        self.config.rw_exposure_files = files;
        self
    }
    /// The checked configuration, or the first problem found.
    pub fn build(mut self) -> Result<SandboxConfig> {
        if !self.errors.is_empty() {
            return Err(self.errors.remove(0));
        }
        self.config.validate()?;
        Ok(self.config)
    }
}

/// Container paths no exposure may cover: the system, and the agent's own places.
const RESERVED_TARGETS: &[&str] = &[
    "/proc",
    "/sys",
    "/dev",
    "/usr",
    "/etc",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/boot",
    "/var/run",
    "/opt/biocage",
];

/// Most files and folders in each tmpfs: millions of empty files would otherwise pin
/// kernel memory without counting against the size limit.
pub const TMPFS_INODES: u32 = 65536;

/// True for an absolute path with no "." or ".." component and no NUL.
pub fn is_absolute_clean(path: &str) -> bool {
    path.starts_with('/')
        && !path.contains('\0')
        && path.split('/').skip(1).all(|c| c != ".." && c != ".")
}

fn normalize(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    let mut out = String::new();
    for part in trimmed.split('/').filter(|p| !p.is_empty()) {
        out.push('/');
        out.push_str(part);
    }
    if out.is_empty() {
        "/".into()
    } else {
        out
    }
}

fn is_within(path: &str, root: &str) -> bool {
    path == root || path.starts_with(&format!("{root}/"))
}

/// Host folders that a read-write exposure may not be (or be inside) unless forced:
/// sandbox code could rewrite the system, or an engine's containers and images.
const SYSTEM_HOST_FOLDERS: &[&str] = &[
    "/etc",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/boot",
    "/root",
    "/proc",
    "/sys",
    "/dev",
    "/var/lib/docker",
    "/var/lib/containerd",
    "/var/lib/containers",
];

/// Why a read-write exposure of `host` (canonical) would expose the host's system,
/// if it would: the folder itself, one that holds a system folder (`/`, `/var`), or
/// one inside a system folder.
fn system_folder(host: &Path) -> Option<String> {
    let text = host.to_string_lossy();
    if text == "/" || text == "/var" {
        return Some(format!("{text} holds every host system folder below it"));
    }
    SYSTEM_HOST_FOLDERS
        .iter()
        .find(|f| is_within(&text, f))
        .map(|f| format!("it is within {f}, a host system folder"))
}

/// Checks exposures: host path present, target absolute, clean, not over a system
/// location, not on the same target as another exposure.
pub fn validate_exposures(config: &SandboxConfig) -> Result<()> {
    let mut seen = HashSet::new();
    for e in &config.exposures {
        let bad = |reason: String| Error::InvalidConfig {
            field: "exposure",
            value: format!("{}:{}", e.host.display(), e.container),
            reason,
        };
        if !e.host.exists() {
            return Err(bad(format!(
                "host path {} does not exist; give an existing file or folder",
                e.host.display()
            )));
        }
        if e.mode == ExposureMode::ReadWrite && !config.force_system_rw {
            let canonical = e.host.canonicalize().unwrap_or_else(|_| e.host.clone());
            if let Some(why) = system_folder(&canonical) {
                return Err(bad(format!(
                    "{why}: sandbox code could rewrite the host; expose a folder of your own read-write, or this one read-only (force_system_rw / --force-system-rw allows it)"
                )));
            }
        }
        if e.mode == ExposureMode::ReadWrite && !e.host.is_dir() {
            return Err(bad(
                "read-write exposures must be folders; expose a file read-only, or its folder read-write"
                    .into(),
            ));
        }
        if !is_absolute_clean(&e.container) {
            return Err(bad(
                "the container path must be absolute and must not contain '.' or '..'".into(),
            ));
        }
        let target = normalize(&e.container);
        let reserved = target == "/"
            || target == "/tmp"
            || target == normalize(&config.workspace)
            || RESERVED_TARGETS.iter().any(|r| is_within(&target, r));
        if reserved {
            return Err(bad(format!(
                "{target} is a system or sandbox location; choose a path such as /data/... or {}/...",
                config.workspace
            )));
        }
        if !seen.insert(target.clone()) {
            return Err(bad(format!(
                "two exposures target {target}; give each its own container path"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_hardened_and_valid() {
        let c = SandboxConfig::builder().build().unwrap();
        assert_eq!(c.image, "biocage:latest");
        assert_eq!(c.memory_bytes, 512 << 20);
        assert!(!c.network);
        assert_eq!(c.timeout, Duration::from_secs(30));
        assert_eq!(c.output_cap, 1 << 20);
        assert!(!c.allow_unenforced_limits);
        assert_ne!(c.user.split(':').next(), Some("0"));
    }

    #[test]
    fn bad_values_are_named() {
        let e = SandboxConfig::builder().memory("x").build().unwrap_err();
        assert!(e.to_string().contains("memory"), "{e}");
        let e = SandboxConfig::builder().cpus(0.0).build().unwrap_err();
        assert!(e.to_string().contains("cpus"), "{e}");
        let e = SandboxConfig::builder().memory("1m").build().unwrap_err();
        assert!(e.to_string().contains("32m"), "{e}");
        let e = SandboxConfig::builder()
            .timeout(Duration::ZERO)
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("timeout"), "{e}");
        for bad in [0.0, -1.0, f64::NAN, 1e20, 90000.0] {
            assert!(timeout_from_secs(bad).is_err(), "{bad}");
        }
        assert_eq!(timeout_from_secs(1.5).unwrap(), Duration::from_millis(1500));
        for bytes in [u64::MAX, (1 << 40) + 1, 1 << 62] {
            let e = SandboxConfig::builder()
                .memory_bytes(bytes)
                .build()
                .unwrap_err();
            assert!(e.to_string().contains("memory"), "{e}");
        }
        let e = SandboxConfig::builder()
            .rw_exposure_bytes(u64::MAX)
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("exposure"), "{e}");
        let e = SandboxConfig::builder()
            .pids_limit(u32::MAX)
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("pids"), "{e}");
        for system in ["/", "/etc", "/usr/lib", "/var", "/root", "/var/lib/docker"] {
            if !Path::new(system).exists() {
                continue;
            }
            let e = SandboxConfig::builder()
                .expose_rw(system, "/data/x")
                .build()
                .unwrap_err()
                .to_string();
            assert!(e.contains("system folder"), "{system}: {e}");
            assert!(SandboxConfig::builder()
                .expose_rw(system, "/data/x")
                .force_system_rw(true)
                .build()
                .is_ok());
            assert!(SandboxConfig::builder()
                .expose(system, "/data/x")
                .build()
                .is_ok());
        }
        let c = SandboxConfig {
            user: "0:0".into(),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("root"));
        for spelling in [
            "00:0",
            "000",
            "0",
            "1000:0",
            "+0:1",
            "root",
            "root:root",
            " 0",
            "1000:",
            ":1000",
            "1:2:3",
            "-1",
        ] {
            let c = SandboxConfig {
                user: spelling.into(),
                ..Default::default()
            };
            assert!(c.validate().is_err(), "{spelling:?} was accepted");
        }
        for fine in ["1000", "1000:1000", "65534:65534"] {
            let c = SandboxConfig {
                user: fine.into(),
                ..Default::default()
            };
            assert!(c.validate().is_ok(), "{fine:?} was refused");
        }
    }
}
