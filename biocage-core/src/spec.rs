//! The engine-neutral description of a sandbox container, made from a config.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use serde_json::json;

use crate::agent;
use crate::config::{ExposureMode, SandboxConfig};
use crate::error::{Error, Result};
use crate::limits::LimitPlan;
use crate::result::{
    MAX_DISPLAYS, MAX_DISPLAY_BYTES, MAX_IMAGES, MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, MESSAGE_CAP,
    TRACEBACK_CAP, VALUE_CAP,
};
use crate::staging::Staging;

/// Longest request line the agent accepts: the largest code, JSON-escaped (6 bytes a
/// byte at worst), or the largest transfer in base64, plus framing.
pub fn request_line_limit(config: &SandboxConfig) -> usize {
    let transfer = usize::try_from(config.max_transfer_bytes).unwrap_or(usize::MAX);
    (config.max_code_bytes.saturating_mul(6))
        .max(transfer.saturating_mul(4) / 3)
        .saturating_add(1 << 20)
}

/// Longest reply line the host accepts from the agent: a result with every field at its
/// cap (both output streams and the text fields JSON-escaped at worst, images in base64),
/// or the largest transfer in base64, plus framing. Anything longer is not the agent's.
pub fn reply_line_limit(config: &SandboxConfig) -> usize {
    let transfer = usize::try_from(config.max_transfer_bytes).unwrap_or(usize::MAX);
    let result = config
        .output_cap
        .saturating_mul(12)
        .saturating_add(7 * (VALUE_CAP + MESSAGE_CAP + TRACEBACK_CAP + (16 << 10)))
        .saturating_add(MAX_IMAGE_BYTES * 4 / 3)
        .saturating_add(MAX_DISPLAY_BYTES * 6);
    result
        .max(transfer.saturating_mul(4) / 3)
        .max(crate::mirror::PAGE_BYTES)
        .saturating_add(1 << 20)
}

/// Label set on every container BioCage manages.
pub const LABEL_MANAGED: &str = "org.biocage.managed";
/// Label holding the session id.
pub const LABEL_SESSION: &str = "org.biocage.session";
/// Label holding the host process id that made the sandbox.
pub const LABEL_OWNER_PID: &str = "org.biocage.owner-pid";
/// Label holding the name of the host that made the sandbox (owner pids mean nothing elsewhere).
pub const LABEL_OWNER_HOST: &str = "org.biocage.owner-host";

/// This host's name, as labelled on the sandboxes it makes.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
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
    "/run",
    "/var/run",
    "/opt/biocage",
];

/// Most files and folders in each tmpfs: millions of empty files would otherwise pin
/// kernel memory without counting against the size limit.
pub const TMPFS_INODES: u32 = 65536;

/// A tmpfs mounted in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmpfsMount {
    /// Where.
    pub target: String,
    /// Mount options, e.g. "rw,nosuid,nodev,size=134217728,mode=1777".
    pub options: String,
}

/// A host path bound into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Host path (absolute).
    pub host: PathBuf,
    /// Container path.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Everything a backend needs to create a hardened sandbox container.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    /// Container name.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// uid:gid of every process.
    pub user: String,
    /// Labels (managed marker, session id, owner pid).
    pub labels: BTreeMap<String, String>,
    /// Environment, "KEY=VALUE".
    pub env: Vec<String>,
    /// The container's main process: the agent in its init role.
    pub init_argv: Vec<String>,
    /// The process attached as the control channel: the agent's supervisor.
    pub agent_argv: Vec<String>,
    /// Working directory.
    pub workdir: String,
    /// tmpfs mounts (workspace, /tmp).
    pub tmpfs: Vec<TmpfsMount>,
    /// Host exposures.
    pub binds: Vec<BindMount>,
    /// Memory limit for the cgroup (swap set equal), when the engine enforces it.
    pub memory_bytes: u64,
    /// CPU limit in cores.
    pub cpus: f64,
    /// pids limit.
    pub pids_limit: u32,
    /// /dev/shm size.
    pub shm_bytes: u64,
    /// Network enabled.
    pub network: bool,
    /// Hard and soft rlimits set by the engine (explicit: engine defaults may exceed the host's).
    pub ulimits: Vec<(String, i64)>,
    /// Paths hidden (a null device or an empty read-only folder over them) besides the
    /// engine's own list.
    pub masked_paths: Vec<String>,
    /// Kernel settings of the container's own namespaces (IPC).
    pub sysctls: BTreeMap<String, String>,
}

impl ContainerSpec {
    /// The spec for a session `session_id` with `config`, limits held as `plan` says.
    pub fn new(
        session_id: &str,
        config: &SandboxConfig,
        plan: &LimitPlan,
        staging: Option<&Staging>,
    ) -> Result<Self> {
        config.validate()?;
        let mut labels = BTreeMap::new();
        labels.insert(LABEL_MANAGED.to_string(), "true".to_string());
        labels.insert(LABEL_SESSION.to_string(), session_id.to_string());
        labels.insert(LABEL_OWNER_PID.to_string(), std::process::id().to_string());
        labels.insert(LABEL_OWNER_HOST.to_string(), host_name());
        // cpus is validated within 0.01..=1024.
        #[allow(clippy::cast_possible_truncation)]
        let threads = config.cpus.ceil().clamp(1.0, 1024.0) as u64;
        let mut env = vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            format!("HOME={}", config.workspace),
            // The uid may have no passwd entry (a uid of the session's own): getpass and
            // friends read these first.
            "USER=sandbox".to_string(),
            "LOGNAME=sandbox".to_string(),
            "MPLBACKEND=Agg".to_string(),
            "MPLCONFIGDIR=/tmp/.matplotlib".to_string(),
            "PYTHONDONTWRITEBYTECODE=1".to_string(),
            "PYTHONIOENCODING=utf-8".to_string(),
            format!("OPENBLAS_NUM_THREADS={threads}"),
            format!("OMP_NUM_THREADS={threads}"),
            format!("MKL_NUM_THREADS={threads}"),
        ];
        for (k, v) in &config.env {
            env.retain(|e| !e.starts_with(&format!("{k}=")));
            env.push(format!("{k}={v}"));
        }
        let uid_gid = parse_user(&config.user);
        let tmpfs = vec![
            TmpfsMount {
                target: "/tmp".into(),
                options: format!(
                    "rw,nosuid,nodev,size={},nr_inodes={},mode=1777",
                    config.tmp_bytes, TMPFS_INODES
                ),
            },
            TmpfsMount {
                target: config.workspace.clone(),
                options: format!(
                    "rw,nosuid,nodev,size={},nr_inodes={},mode=0700{}",
                    config.workspace_bytes,
                    TMPFS_INODES,
                    uid_gid
                        .map(|(u, g)| format!(",uid={u},gid={g}"))
                        .unwrap_or_default()
                ),
            },
        ];
        let mut tmpfs = tmpfs;
        // Small and explicit: a rootless engine's read-only mode would otherwise mount
        // these writable with half the host's memory as their size.
        tmpfs.push(TmpfsMount {
            target: "/run".into(),
            options: "rw,nosuid,nodev,noexec,size=1048576,mode=0755".into(),
        });
        tmpfs.push(TmpfsMount {
            target: "/var/tmp".into(),
            options: format!("rw,nosuid,nodev,size={},nr_inodes=1024,mode=1777", 16 << 20),
        });
        // Read-write exposures are tmpfs of their own, mirrored to the host by the agent.
        for e in config
            .exposures
            .iter()
            .filter(|e| e.mode == ExposureMode::ReadWrite)
        {
            tmpfs.push(TmpfsMount {
                target: e.container.clone(),
                options: format!(
                    "rw,nosuid,nodev,noexec,size={},nr_inodes={},mode=0700{}",
                    config.rw_exposure_bytes,
                    config.rw_exposure_files,
                    uid_gid
                        .map(|(u, g)| format!(",uid={u},gid={g}"))
                        .unwrap_or_default()
                ),
            });
        }
        let binds = match staging {
            Some(st) => st.binds().to_vec(),
            None => config
                .exposures
                .iter()
                .filter(|e| e.mode == ExposureMode::ReadOnly)
                .map(|e| BindMount {
                    host: e.host.clone(),
                    target: e.container.clone(),
                    read_only: true,
                })
                .collect(),
        };
        let mut file_roots = vec![config.workspace.clone(), "/tmp".to_string()];
        file_roots.extend(
            config
                .exposures
                .iter()
                .filter(|e| e.mode == ExposureMode::ReadWrite)
                .map(|e| e.container.clone()),
        );
        let agent_config = json!({
            "output_cap": config.output_cap,
            "timeout": config.timeout.as_secs_f64(),
            "interrupt_grace": config.interrupt_grace.as_secs_f64(),
            "rlimits": plan.rlimits,
            "capture_figures": config.capture_figures,
            "workdir": config.workspace,
            "file_roots": file_roots,
            "pids_limit": config.pids_limit,
            "value_cap": VALUE_CAP,
            "message_cap": MESSAGE_CAP,
            "traceback_cap": TRACEBACK_CAP,
            "max_images": MAX_IMAGES,
            "max_image_bytes": MAX_IMAGE_BYTES,
            "max_image_pixels": MAX_IMAGE_PIXELS,
            "max_displays": MAX_DISPLAYS,
            "max_display_bytes": MAX_DISPLAY_BYTES,
            "max_code_bytes": config.max_code_bytes,
            "request_cap": request_line_limit(config),
            "deny_syscalls": plan.denied_syscalls,
        });
        Ok(ContainerSpec {
            name: format!("biocage-{session_id}"),
            image: config.image.clone(),
            user: config.user.clone(),
            labels,
            env,
            init_argv: agent::init_argv(config.orphan_grace),
            agent_argv: agent::serve_argv(&agent_config),
            workdir: config.workspace.clone(),
            tmpfs,
            binds,
            memory_bytes: config.memory_bytes,
            cpus: config.cpus,
            pids_limit: config.pids_limit,
            shm_bytes: config.shm_bytes,
            network: config.network,
            ulimits: vec![
                ("nofile".into(), 4096),
                // Not the process limit (a cgroup, or the worker's own RLIMIT_NPROC, holds
                // that): RLIMIT_NPROC counts every task of a uid on the host, and on rootless
                // engines the exec'd runtime starts as the engine user's uid, whose own
                // threads would then count against a tight value. 32768: rootless Podman's
                // conmon holds that hard limit here, and no value above it can be set.
                ("nproc".into(), 32768),
                ("core".into(), 0),
                // POSIX message queues are charged per user: on a rootless engine, to the
                // engine's host user that every session shares.
                ("msgqueue".into(), if plan.rootless { 0 } else { 819_200 }),
            ],
            // Every session opening pseudo-terminals draws from one host-wide quota:
            // none in the sandbox. Without cgroup limits, the host's cgroup hierarchy
            // (other containers' ids and usage) would show: hidden.
            masked_paths: ["/dev/ptmx", "/dev/pts/ptmx"]
                .into_iter()
                .chain((!plan.cgroup_limits).then_some("/sys/fs/cgroup"))
                .map(String::from)
                .collect(),
            // SysV shared memory lives in the container's IPC namespace, bounded here by
            // the size of /dev/shm (a rootless engine counts it against nothing else).
            sysctls: BTreeMap::from([
                ("kernel.shmmax".to_string(), config.shm_bytes.to_string()),
                (
                    "kernel.shmall".to_string(),
                    (config.shm_bytes / 4096).to_string(),
                ),
                ("kernel.shmmni".to_string(), "64".to_string()),
            ]),
        })
    }
}

impl ContainerSpec {
    /// The cpu limit in billionths of a core (Docker's nano_cpus).
    pub fn nano_cpus(&self) -> i64 {
        // The config keeps cpus within 0.01..=1024, so this is at most 1.024e12.
        #[allow(clippy::cast_possible_truncation)]
        let nano = (self.cpus.clamp(0.0, 1024.0) * 1e9).round() as i64;
        nano
    }

    /// A size as the signed 64-bit number engine APIs take; refused (never wrapped to a
    /// negative value that an engine reads as "unlimited") when it does not fit.
    pub fn signed(what: &'static str, bytes: u64) -> Result<i64> {
        i64::try_from(bytes).map_err(|_| Error::InvalidConfig {
            field: what,
            value: bytes.to_string(),
            reason: "too large for the engine; use at most 1t".into(),
        })
    }
}

/// Numeric uid and gid of "uid:gid", if both are numbers.
fn parse_user(user: &str) -> Option<(u32, u32)> {
    let (u, g) = user.split_once(':').unwrap_or((user, user));
    Some((u.parse().ok()?, g.parse().ok()?))
}

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
    use crate::limits::{Capabilities, LimitPlan};

    fn plan(config: &SandboxConfig) -> LimitPlan {
        let caps = Capabilities {
            engine: "e".into(),
            engine_version: "1".into(),
            api_version: "1".into(),
            rootless: false,
            cgroup_version: 1,
            cgroup_limits: true,
            tmpfs_inode_limit: true,
            uid_map: vec![],
            gid_map: vec![],
        };
        LimitPlan::new(&caps, config).unwrap()
    }

    #[test]
    fn spec_is_hardened_and_labelled() {
        let c = SandboxConfig::default();
        let s = ContainerSpec::new("abc", &c, &plan(&c), None).unwrap();
        assert_eq!(s.labels[LABEL_MANAGED], "true");
        assert_eq!(s.labels[LABEL_SESSION], "abc");
        assert!(!s.network);
        assert_eq!(s.user, "1000:1000");
        assert!(s
            .tmpfs
            .iter()
            .any(|t| t.target == "/workspace" && t.options.contains("uid=1000")));
        assert_eq!(s.agent_argv[0], "python3");
        assert!(s.agent_argv.contains(&"biocage-serve".to_string()));
    }

    #[test]
    fn exposures_are_checked() {
        let dir = std::env::temp_dir();
        let cases = [
            ("/definitely/not/here", "/data", "does not exist"),
            (dir.to_str().unwrap(), "data", "absolute"),
            (dir.to_str().unwrap(), "/data/../etc", "'..'"),
            (dir.to_str().unwrap(), "/etc/x", "system"),
            (dir.to_str().unwrap(), "/", "system"),
            (dir.to_str().unwrap(), "/proc", "system"),
        ];
        for (host, target, needle) in cases {
            let err = SandboxConfig::builder()
                .expose(host, target)
                .build()
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{host}:{target}: {err}");
        }
        let err = SandboxConfig::builder()
            .expose(&dir, "/data")
            .expose(&dir, "/data/")
            .build()
            .unwrap_err()
            .to_string();
        assert!(err.contains("two exposures"), "{err}");
        assert!(SandboxConfig::builder()
            .expose(&dir, "/data/in")
            .build()
            .is_ok());
    }
}
