//! The engine-neutral description of a sandbox container, made from a config.

use std::collections::{BTreeMap, HashMap};

use crate::agent;
use crate::config::{ExposureMode, SandboxConfig, TMPFS_INODES};
use crate::error::{Error, Result};
use crate::limits::LimitPlan;
use crate::protocol::AgentConfig;
use crate::result::{
    MAX_DISPLAYS, MAX_DISPLAY_BYTES, MAX_IMAGES, MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, MESSAGE_CAP,
    TRACEBACK_CAP, VALUE_CAP,
};
use crate::staging::{BindMount, Staging};
use crate::uids::{ROOTFUL_AGENT_UID, ROOTLESS_AGENT_UID};

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
/// Label: the session's isolation ("container", "gvisor").
pub const LABEL_ISOLATION: &str = "org.biocage.isolation";

/// This host's name, as labelled on the sandboxes it makes.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// A tmpfs mounted in the container: always writable, nosuid and nodev.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmpfsMount {
    /// Where.
    pub target: String,
    /// Size in bytes (ENOSPC past it).
    pub size_bytes: u64,
    /// Most files and folders in it, where the engine can hold that (`nr_inodes`).
    pub inodes: Option<u32>,
    /// Permission bits of its root.
    pub mode: u32,
    /// uid and gid owning its root (the sandbox user), or root when None.
    pub owner: Option<(u32, u32)>,
    /// Programs may be run from it (else noexec).
    pub exec: bool,
    /// Made by the host's kernel as an engine volume of the local driver (see
    /// [`Self::volume_options`]), not by the container's runtime: see
    /// [`LimitPlan::tmpfs_volumes`].
    pub volume: bool,
}

impl TmpfsMount {
    /// The mount options as the kernel reads them, e.g.
    /// `rw,nosuid,nodev,size=134217728,nr_inodes=65536,mode=1777`.
    pub fn kernel_options(&self) -> Vec<String> {
        let mut out = vec!["rw".to_string(), "nosuid".into(), "nodev".into()];
        if !self.exec {
            out.push("noexec".into());
        }
        out.push(format!("size={}", self.size_bytes));
        if let Some(n) = self.inodes {
            out.push(format!("nr_inodes={n}"));
        }
        out.push(format!("mode={:04o}", self.mode));
        if let Some((u, g)) = self.owner {
            out.push(format!("uid={u}"));
            out.push(format!("gid={g}"));
        }
        out
    }

    /// The options of the engines' `local` volume driver that make a volume this tmpfs
    /// (mounted by the host's kernel with [`Self::kernel_options`]).
    pub fn volume_options(&self) -> HashMap<String, String> {
        HashMap::from([
            ("type".to_string(), "tmpfs".to_string()),
            ("device".to_string(), "tmpfs".to_string()),
            ("o".to_string(), self.kernel_options().join(",")),
        ])
    }
}

/// A resource limit the engine sets on the container's processes (soft = hard).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rlimit {
    /// Open files (RLIMIT_NOFILE).
    NoFile(u64),
    /// Processes of a uid (RLIMIT_NPROC).
    NProc(u64),
    /// Core dump size (RLIMIT_CORE).
    Core(u64),
    /// Bytes of POSIX message queues of a uid (RLIMIT_MSGQUEUE).
    MsgQueue(u64),
}

impl Rlimit {
    /// The name engines use ("nofile", "nproc", "core", "msgqueue") and the value.
    pub fn name_and_value(self) -> (&'static str, u64) {
        match self {
            Rlimit::NoFile(v) => ("nofile", v),
            Rlimit::NProc(v) => ("nproc", v),
            Rlimit::Core(v) => ("core", v),
            Rlimit::MsgQueue(v) => ("msgqueue", v),
        }
    }
}

/// The capabilities the container keeps for the agent's supervisor (see the agent's
/// AGENT_CAPS): to start user code as the sandbox user, signal it, and see where its
/// main thread is; CHOWN while it starts, to give the sandbox user its folders (an
/// engine may make them root's); the file capabilities only under gVisor (no setfsuid). User code holds none of them, not even in its
/// bounding set.
pub const AGENT_CAPABILITIES: [&str; 9] = [
    "SETUID",
    "SETGID",
    "SETPCAP",
    "KILL",
    "SYS_PTRACE",
    "CHOWN",
    // Kept by the supervisor only where the kernel has no setfsuid (gVisor).
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
];

/// Everything a backend needs to create a hardened sandbox container.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    /// Container name.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// uid:gid the container's processes start as: root, holding only `cap_add`, when
    /// the agent separates privileges (it drops to its own uid at once, and user code to
    /// the sandbox user's with no capability); else the sandbox user.
    pub user: String,
    /// Capabilities the container keeps (every other one is dropped).
    pub cap_add: Vec<String>,
    /// Labels (managed marker, session id, owner pid).
    pub labels: BTreeMap<String, String>,
    /// Environment of every process.
    pub env: BTreeMap<String, String>,
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
    /// rlimits set by the engine (explicit: engine defaults may exceed the host's).
    pub ulimits: Vec<Rlimit>,
    /// Paths hidden (a null device or an empty read-only folder over them) besides the
    /// engine's own list.
    pub masked_paths: Vec<String>,
    /// Kernel settings of the container's own namespaces (IPC).
    pub sysctls: BTreeMap<String, String>,
    /// The engine's OCI runtime to use (gVisor's), or None for its default.
    pub oci_runtime: Option<String>,
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
        labels.insert(
            LABEL_ISOLATION.to_string(),
            config.isolation.as_str().to_string(),
        );
        // cpus is validated within 0.01..=1024.
        #[allow(clippy::cast_possible_truncation)]
        let threads = config.cpus.ceil().clamp(1.0, 1024.0) as u64;
        let mut env: BTreeMap<String, String> = [
            (
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            ),
            ("HOME", config.workspace.clone()),
            // The uid has no passwd entry (a uid of the session's own): getpass and
            // friends read these first.
            ("USER", "sandbox".into()),
            ("LOGNAME", "sandbox".into()),
            ("MPLBACKEND", "Agg".into()),
            ("MPLCONFIGDIR", "/tmp/.matplotlib".into()),
            ("PYTHONDONTWRITEBYTECODE", "1".into()),
            ("PYTHONIOENCODING", "utf-8".into()),
            ("OPENBLAS_NUM_THREADS", threads.to_string()),
            ("OMP_NUM_THREADS", threads.to_string()),
            ("MKL_NUM_THREADS", threads.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if plan.oci_runtime.is_some() {
            // RLIMIT_AS holds memory there: fewer malloc arenas reserve less of it.
            env.insert("MALLOC_ARENA_MAX".into(), "2".into());
        }
        env.extend(config.env.clone());
        let owner = parse_user(&config.user);
        let tmpfs_of =
            |target: &str, size: u64, inodes: Option<u32>, mode: u32, owned: bool, exec: bool| {
                TmpfsMount {
                    target: target.to_string(),
                    size_bytes: size,
                    inodes,
                    mode,
                    owner: if owned { owner } else { None },
                    exec,
                    volume: false,
                }
            };
        let mut tmpfs = vec![
            tmpfs_of(
                "/tmp",
                config.tmp_bytes,
                Some(TMPFS_INODES),
                0o1777,
                false,
                true,
            ),
            tmpfs_of(
                &config.workspace,
                config.workspace_bytes,
                Some(TMPFS_INODES),
                0o700,
                true,
                true,
            ),
            // Small and explicit: a rootless engine's read-only mode would otherwise mount
            // these writable with half the host's memory as their size.
            tmpfs_of("/run", 1 << 20, None, 0o755, false, false),
            tmpfs_of("/var/tmp", 16 << 20, Some(1024), 0o1777, false, true),
        ];
        // Read-write exposures (below) stay in the runtime's own tmpfs: the agent lists
        // them after every run, and through gVisor's gofer that costs about 1 ms an entry.
        for t in &mut tmpfs {
            t.volume = plan.tmpfs_volumes && t.inodes.is_some();
        }
        // Read-write exposures are tmpfs of their own, mirrored to the host by the agent.
        for e in config
            .exposures
            .iter()
            .filter(|e| e.mode == ExposureMode::ReadWrite)
        {
            tmpfs.push(tmpfs_of(
                &e.container,
                config.rw_exposure_bytes,
                Some(config.rw_exposure_files),
                0o700,
                true,
                false,
            ));
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
        // Privilege separation: the supervisor's uid is one sandbox code never has.
        let agent_uid = owner.map(|_| {
            if plan.rootless {
                ROOTLESS_AGENT_UID
            } else {
                ROOTFUL_AGENT_UID
            }
        });
        if let (Some(a), Some((u, g))) = (agent_uid, owner) {
            if a == u || a == g {
                return Err(Error::InvalidConfig {
                    field: "user",
                    value: config.user.clone(),
                    reason: format!("{a} is the sandbox supervisor's own uid; choose another"),
                });
            }
        }
        let agent_config = serde_json::to_value(AgentConfig {
            output_cap: config.output_cap,
            timeout: config.timeout.as_secs_f64(),
            interrupt_grace: config.interrupt_grace.as_secs_f64(),
            rlimits: {
                let mut r = plan.rlimits.clone();
                if agent_uid.is_some() {
                    // The agent's two processes (init, supervisor) no longer share the
                    // sandbox user's uid, so its own count leaves room for them.
                    if let Some(n) = r.get_mut("nproc") {
                        *n = n.saturating_sub(2).max(1);
                    }
                }
                r
            },
            capture_figures: config.capture_figures,
            workdir: config.workspace.clone(),
            file_roots,
            pids_limit: config.pids_limit,
            value_cap: VALUE_CAP,
            message_cap: MESSAGE_CAP,
            traceback_cap: TRACEBACK_CAP,
            max_images: MAX_IMAGES,
            max_image_bytes: MAX_IMAGE_BYTES,
            max_image_pixels: MAX_IMAGE_PIXELS,
            max_displays: MAX_DISPLAYS,
            max_display_bytes: MAX_DISPLAY_BYTES,
            max_code_bytes: config.max_code_bytes,
            request_cap: request_line_limit(config),
            deny_syscalls: plan.denied_syscalls.clone(),
            umask: None,
            agent_uid,
            sandbox_uid: owner.map(|o| o.0),
            sandbox_gid: owner.map(|o| o.1),
            own_paths: tmpfs
                .iter()
                .filter(|t| t.owner.is_some())
                .map(|t| t.target.clone())
                .collect(),
        })
        .map_err(|e| Error::Agent(format!("the agent's configuration: {e}")))?;
        Ok(ContainerSpec {
            name: format!("biocage-{session_id}"),
            image: config.image.clone(),
            user: if agent_uid.is_some() {
                "0:0".to_string()
            } else {
                config.user.clone()
            },
            cap_add: if agent_uid.is_some() {
                AGENT_CAPABILITIES.iter().map(|c| c.to_string()).collect()
            } else {
                Vec::new()
            },
            labels,
            env,
            init_argv: agent::init_argv(config.orphan_grace, agent_uid),
            agent_argv: agent::serve_argv(&agent_config),
            workdir: config.workspace.clone(),
            tmpfs,
            binds,
            memory_bytes: config.memory_bytes.saturating_add(plan.memory_headroom),
            cpus: config.cpus,
            pids_limit: config.pids_limit.saturating_add(plan.pids_headroom),
            shm_bytes: config.shm_bytes,
            network: config.network,
            ulimits: vec![
                Rlimit::NoFile(4096),
                // Not the process limit (a cgroup, or the worker's own RLIMIT_NPROC, holds
                // that): RLIMIT_NPROC counts every task of a uid on the host, and on rootless
                // engines the exec'd runtime starts as the engine user's uid, whose own
                // threads would then count against a tight value. 32768: rootless Podman's
                // conmon holds that hard limit here, and no value above it can be set.
                Rlimit::NProc(32768),
                Rlimit::Core(0),
                // POSIX message queues are charged per user: on a rootless engine, to the
                // engine's host user that every session shares.
                Rlimit::MsgQueue(if plan.rootless { 0 } else { 819_200 }),
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
            oci_runtime: plan.oci_runtime.clone(),
        })
    }
}

impl ContainerSpec {
    /// The cpu limit as a whole number of `per_core` units (e.g. 1e9 for nanocpus,
    /// 100000 for a cfs quota over a 100 ms period).
    pub fn cpu_units(&self, per_core: u32) -> i64 {
        // The config keeps cpus within 0.01..=1024, so this fits easily.
        #[allow(clippy::cast_possible_truncation)]
        let units = (self.cpus.clamp(0.0, 1024.0) * f64::from(per_core)).round() as i64;
        units
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
            gvisor_runtime: None,
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
        // Root with the agent's capabilities only; the agent drops to its own uid and
        // user code to the sandbox user's.
        assert_eq!(s.user, "0:0");
        assert!(s
            .cap_add
            .iter()
            .all(|c| AGENT_CAPABILITIES.contains(&c.as_str())));
        let agent: serde_json::Value = serde_json::from_str(&s.agent_argv[5]).unwrap();
        assert_eq!(agent["sandbox_uid"], 1000);
        assert_eq!(agent["agent_uid"], ROOTFUL_AGENT_UID);
        assert!(s
            .tmpfs
            .iter()
            .any(|t| t.target == "/workspace" && t.owner == Some((1000, 1000))));
        let tmp = s.tmpfs.iter().find(|t| t.target == "/tmp").unwrap();
        assert_eq!(
            tmp.kernel_options().join(","),
            "rw,nosuid,nodev,size=134217728,nr_inodes=65536,mode=1777"
        );
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
