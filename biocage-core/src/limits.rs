//! Which mechanism holds each limit, per backend: nothing is silently unenforced.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::TMPFS_INODES;
use crate::config::{ExposureMode, Isolation, SandboxConfig};
use crate::error::{Error, Result};
use crate::size::format_size;

/// Who enforces a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Enforcement {
    /// The engine, through the container's cgroup (or namespace).
    Engine,
    /// The in-container agent, through rlimits on the interpreter.
    Rlimit,
    /// The in-container agent's supervisor (interrupt, then kill).
    Agent,
    /// Nobody: allowed only with `allow_unenforced_limits`.
    Unenforced,
}

/// Which limit a [`LimitStatus`] describes; shown and serialized as its name
/// ("memory", "exposure size", ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum LimitName {
    /// Memory of the whole sandbox.
    #[serde(rename = "memory")]
    Memory,
    /// Swap on top of memory.
    #[serde(rename = "swap")]
    Swap,
    /// Processes and threads.
    #[serde(rename = "pids")]
    Pids,
    /// CPU time share.
    #[serde(rename = "cpu")]
    Cpu,
    /// Files in each tmpfs.
    #[serde(rename = "files")]
    Files,
    /// Time per run.
    #[serde(rename = "timeout")]
    Timeout,
    /// Network access.
    #[serde(rename = "network")]
    Network,
    /// inotify watches and instances.
    #[serde(rename = "inotify")]
    Inotify,
    /// Bytes in each read-write exposure.
    #[serde(rename = "exposure size")]
    ExposureSize,
    /// Files in each read-write exposure.
    #[serde(rename = "exposure files")]
    ExposureFiles,
    /// The supervisor's system-call filter.
    #[serde(rename = "seccomp")]
    Seccomp,
}

impl LimitName {
    /// The limit's name as people read it.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitName::Memory => "memory",
            LimitName::Swap => "swap",
            LimitName::Pids => "pids",
            LimitName::Cpu => "cpu",
            LimitName::Files => "files",
            LimitName::Timeout => "timeout",
            LimitName::Network => "network",
            LimitName::Inotify => "inotify",
            LimitName::ExposureSize => "exposure size",
            LimitName::ExposureFiles => "exposure files",
            LimitName::Seccomp => "seccomp",
        }
    }
}

impl std::fmt::Display for LimitName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for LimitName {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for LimitName {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// One limit, its value and how it is held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitStatus {
    /// Which limit.
    pub name: LimitName,
    /// The configured value, readable ("512m", "1", "off").
    pub value: String,
    /// Who enforces it.
    pub enforcement: Enforcement,
    /// The concrete mechanism, for people.
    pub mechanism: String,
}

/// What an engine (as reached now) can do; reported by [`crate::SandboxRuntime::capabilities`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Engine name ("docker", "podman").
    pub engine: String,
    /// The engine's version.
    pub engine_version: String,
    /// The API version in use.
    pub api_version: String,
    /// Whether the engine runs without root.
    pub rootless: bool,
    /// The host's cgroup version (1 or 2; 0 if unknown).
    pub cgroup_version: u8,
    /// Whether the engine applies memory, pids and cpu limits to containers.
    pub cgroup_limits: bool,
    /// Whether the engine can cap the number of files in a tmpfs (nr_inodes).
    pub tmpfs_inode_limit: bool,
    /// How container uids map to host uids (empty: the identity, as on rootful engines).
    #[serde(default)]
    pub uid_map: Vec<IdMap>,
    /// How container gids map to host gids (empty: the identity).
    #[serde(default)]
    pub gid_map: Vec<IdMap>,
    /// The engine's name for gVisor's `runsc` OCI runtime, when it has one.
    #[serde(default)]
    pub gvisor_runtime: Option<String>,
}

/// One range of a user-namespace id mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    /// First id inside the container.
    pub container_id: u32,
    /// First id on the host.
    pub host_id: u32,
    /// Number of ids.
    pub size: u32,
}

/// The host id of container id `id` under `map` (the identity when the map is empty).
pub fn map_id(map: &[IdMap], id: u32) -> Option<u32> {
    if map.is_empty() {
        return Some(id);
    }
    map.iter()
        .find(|m| id >= m.container_id && id - m.container_id < m.size)
        .map(|m| m.host_id + (id - m.container_id))
}

/// How a given configuration's limits will be enforced on a given engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitPlan {
    /// Every limit with its mechanism.
    pub limits: Vec<LimitStatus>,
    /// rlimits the agent applies to the interpreter (name without RLIMIT_, lowercase).
    pub rlimits: BTreeMap<String, u64>,
    /// System calls the agent's seccomp filter refuses beyond its fixed set: those whose
    /// kernel resources this engine cannot bound per session.
    #[serde(default)]
    pub denied_syscalls: Vec<String>,
    /// The engine runs without root: its user namespace maps the sandbox's uids to
    /// subordinate ids of one host user, who is charged for per-user kernel counters.
    #[serde(default)]
    pub rootless: bool,
    /// The engine applies cgroup limits (memory, pids, cpu) to the container.
    #[serde(default)]
    pub cgroup_limits: bool,
    /// The engine's OCI runtime to run the container with (gVisor's), if not its default.
    #[serde(default)]
    pub oci_runtime: Option<String>,
    /// Memory the container's cgroup allows beyond the configured limit (gVisor's own).
    #[serde(default)]
    pub memory_headroom: u64,
    /// Processes the container's cgroup allows beyond the configured limit (gVisor's own
    /// threads).
    #[serde(default)]
    pub pids_headroom: u32,
    /// /tmp and the workspace are tmpfs mounts the host's kernel makes, as engine
    /// volumes, rather than the container's runtime: gVisor's own tmpfs ignores
    /// `nr_inodes`, the host's holds it (gVisor reaches the files through its gofer).
    #[serde(default)]
    pub tmpfs_volumes: bool,
}

/// Room the host's cgroup keeps above the memory limit for gVisor's own kernel.
pub const GVISOR_MEMORY_HEADROOM: u64 = 256 << 20;

/// How many host processes and threads the host's cgroup allows per sandbox process
/// under gVisor: its ptrace platform gives every sandbox process a host stub process,
/// with a host thread in it for each of gVisor's own threads that serves it, and makes
/// more of them to tear a killed process down. Measured here (runsc 20221219): culling
/// 62 forked processes took the sandbox past 448 host tasks, and gVisor died at its
/// limit (`error initializing first thread: resource temporarily unavailable`).
pub const GVISOR_PIDS_FACTOR: u32 = 8;

/// Room the host's cgroup keeps beyond [`GVISOR_PIDS_FACTOR`] times the process limit
/// for gVisor's own kernel threads.
pub const GVISOR_PIDS_HEADROOM: u32 = 512;

/// The name `scripts/setup.sh gvisor` registers gVisor's runsc under, with Docker
/// (`--network=none`) and with Podman (a wrapper that adds the flags Podman cannot pass).
pub const GVISOR_RUNTIME: &str = "biocage-gvisor";

/// What to do where gVisor isolation is asked for and the engine has no `runsc`.
pub const GVISOR_HINT: &str = "Install gVisor and register it with the engine: as root, `scripts/setup.sh gvisor` then `scripts/setup.sh podman` or `podman-rootful` for Podman (Debian's runsc, registered as `biocage-gvisor`: with Docker in daemon.json, with Podman in containers.conf [engine.runtimes]); or use container isolation";

/// The engine runtime that gives `config` its isolation on an engine with `caps`.
fn oci_runtime(caps: &Capabilities, config: &SandboxConfig) -> Result<Option<String>> {
    let unavailable = |reason: &str| Error::IsolationUnavailable {
        isolation: config.isolation,
        engine: caps.engine.clone(),
        reason: reason.to_string(),
        hint: GVISOR_HINT.to_string(),
    };
    match config.isolation {
        Isolation::Container => Ok(None),
        Isolation::Gvisor => {
            let Some(name) = caps.gvisor_runtime.clone() else {
                return Err(unavailable("the engine has no runsc runtime"));
            };
            if config.network {
                return Err(unavailable(
                    "gVisor sandboxes run without a network here (runsc --network=none: its own network stack does not start on this kernel); turn the network off",
                ));
            }
            Ok(Some(name))
        }
    }
}

/// Address space each sandbox process may have beyond the memory limit where only
/// rlimits hold memory: numpy, pandas and matplotlib with a few threads reserve far
/// more address space than they use.
pub const ADDRESS_SPACE_HEADROOM: u64 = 512 << 20;

impl LimitPlan {
    /// The plan for `config` on an engine with `caps`; refuses a limit nobody can hold
    /// unless the config allows it.
    pub fn new(caps: &Capabilities, config: &SandboxConfig) -> Result<Self> {
        let oci_runtime = oci_runtime(caps, config)?;
        let gvisor = oci_runtime.is_some();
        let mut limits = Vec::new();
        let mut rlimits = BTreeMap::new();
        let status = |name: LimitName, value: String, enforcement, mechanism: &str| LimitStatus {
            name,
            value,
            enforcement,
            mechanism: mechanism.to_string(),
        };
        let memory = format_size(config.memory_bytes);
        let pids = config.pids_limit.to_string();
        let cpus = format!("{}", config.cpus);
        let (mut memory_headroom, mut pids_headroom) = (0, 0);
        if caps.cgroup_limits && gvisor {
            // The host's cgroup holds gVisor's whole sandbox, its kernel too: at its limit
            // the sandbox dies. The limits themselves are held inside, by gVisor's kernel
            // (it honours RLIMIT_AS and RLIMIT_NPROC, not RLIMIT_DATA), so that a bomb
            // fails in the interpreter (MemoryError, EAGAIN) and the session goes on; the
            // cgroup keeps room for gVisor's own memory and threads above them.
            rlimits.insert("as".into(), config.memory_bytes);
            rlimits.insert("nproc".into(), u64::from(config.pids_limit));
            memory_headroom = GVISOR_MEMORY_HEADROOM;
            pids_headroom = config
                .pids_limit
                .saturating_mul(GVISOR_PIDS_FACTOR - 1)
                .saturating_add(GVISOR_PIDS_HEADROOM);
        }
        if caps.cgroup_limits {
            let v = if caps.cgroup_version == 2 { "v2" } else { "v1" };
            if gvisor {
                limits.push(status(
                    LimitName::Memory,
                    memory.clone(),
                    Enforcement::Rlimit,
                    &format!(
                        "each process: RLIMIT_AS at the limit in gVisor's kernel (MemoryError), memfd and SysV shared memory refused; the whole sandbox: the host's cgroup at the limit + {} for gVisor's own kernel (at it the sandbox is killed)",
                        format_size(GVISOR_MEMORY_HEADROOM)
                    ),
                ));
            } else {
                limits.push(status(
                    LimitName::Memory,
                    memory.clone(),
                    Enforcement::Engine,
                    &format!("cgroup {v} memory limit (out-of-memory kill)"),
                ));
            }
            limits.push(status(
                LimitName::Swap,
                "none".into(),
                Enforcement::Engine,
                "cgroup memory+swap limit equal to the memory limit",
            ));
            limits.push(status(
                LimitName::Pids,
                pids,
                if gvisor {
                    Enforcement::Rlimit
                } else {
                    Enforcement::Engine
                },
                &if gvisor {
                    format!("RLIMIT_NPROC in gVisor's kernel (EAGAIN); the host's cgroup {v} pids limit at {GVISOR_PIDS_FACTOR} times the limit + {GVISOR_PIDS_HEADROOM} for gVisor's own processes and threads")
                } else {
                    format!("cgroup {v} pids limit")
                },
            ));
            if gvisor {
                // Measured here (runsc 20221219, cgroup v1): 4 spinning processes under a
                // 0.5 cpu limit used 1.15 cores.
                if !config.allow_unenforced_limits {
                    return Err(Error::UnenforceableLimit {
                        limit: LimitName::Cpu,
                        engine: caps.engine.clone(),
                        reason: "runsc does not hold the cgroup cpu quota on this host (cgroup v1): gVisor sandboxes are bounded in time by the run timeout only".into(),
                    });
                }
                limits.push(status(
                    LimitName::Cpu,
                    cpus,
                    Enforcement::Unenforced,
                    "not enforced: runsc does not hold the cgroup cpu quota here (the run timeout still bounds time)",
                ));
            } else {
                limits.push(status(
                    LimitName::Cpu,
                    cpus,
                    Enforcement::Engine,
                    &format!("cgroup {v} cpu quota"),
                ));
            }
        } else {
            rlimits.insert("data".into(), config.memory_bytes);
            rlimits.insert("as".into(), config.memory_bytes + ADDRESS_SPACE_HEADROOM);
            rlimits.insert("nproc".into(), u64::from(config.pids_limit));
            if !config.allow_unenforced_limits {
                return Err(Error::UnenforceableLimit {
                    limit: LimitName::Memory,
                    engine: caps.engine.clone(),
                    reason: format!(
                        "the engine cannot apply cgroup limits here (rootless: {}, cgroup v{}); rlimits bound each process, not the sandbox's sum, nor kernel memory such as socket buffers",
                        caps.rootless, caps.cgroup_version
                    ),
                });
            }
            limits.push(status(
                LimitName::Memory,
                memory,
                Enforcement::Unenforced,
                "not enforced for the sandbox as a whole: each process is bounded (RLIMIT_DATA, RLIMIT_AS with 512m headroom: MemoryError), memfd is refused, SysV shared memory and tmpfs are capped; the sum over processes and kernel buffers are not",
            ));
            limits.push(status(
                LimitName::Swap,
                "not counted".into(),
                Enforcement::Rlimit,
                "RLIMIT_DATA bounds allocations whether or not they are swapped",
            ));
            limits.push(status(
                LimitName::Pids,
                pids,
                Enforcement::Rlimit,
                "RLIMIT_NPROC on a uid of the session's own",
            ));
            if !config.allow_unenforced_limits {
                return Err(Error::UnenforceableLimit {
                    limit: LimitName::Cpu,
                    engine: caps.engine.clone(),
                    reason: format!(
                        "the engine cannot apply cgroup limits here (rootless: {}, cgroup v{}), and no rlimit bounds a cpu rate",
                        caps.rootless, caps.cgroup_version
                    ),
                });
            }
            limits.push(status(
                LimitName::Cpu,
                cpus,
                Enforcement::Unenforced,
                "not enforced: no cgroup cpu quota on this engine (the run timeout still bounds time)",
            ));
        }
        if caps.tmpfs_inode_limit {
            limits.push(status(
                LimitName::Files,
                format!("{TMPFS_INODES} per tmpfs"),
                Enforcement::Engine,
                if gvisor {
                    "tmpfs nr_inodes on /tmp and the workspace, mounted by the host's kernel as engine volumes (gVisor's own tmpfs ignores nr_inodes)"
                } else {
                    "tmpfs nr_inodes on /tmp and the workspace"
                },
            ));
        } else if caps.cgroup_limits {
            // Every file costs kernel memory (an inode and its name; under gVisor, the
            // sentry's own memory), charged to the sandbox's memory cgroup.
            limits.push(status(
                LimitName::Files,
                format!("bounded by the {} memory limit", format_size(config.memory_bytes)),
                Enforcement::Engine,
                if gvisor {
                    "gVisor's own tmpfs keeps each file in gVisor's memory, inside the host's cgroup memory limit: a flood of files ends the whole sandbox (the engine refuses tmpfs nr_inodes, runsc ignores it)"
                } else {
                    "the kernel memory of each file (inode and name) is charged to the cgroup memory limit: a file flood ends out of memory (the engine refuses tmpfs nr_inodes)"
                },
            ));
        } else {
            if !config.allow_unenforced_limits {
                return Err(Error::UnenforceableLimit {
                    limit: LimitName::Files,
                    engine: caps.engine.clone(),
                    reason: "the engine refuses the tmpfs nr_inodes option and applies no memory limit, so the number of files in /tmp and the workspace is bounded only by the kernel's default".into(),
                });
            }
            limits.push(status(
                LimitName::Files,
                format!("{TMPFS_INODES} per tmpfs"),
                Enforcement::Unenforced,
                "not enforced: the engine refuses tmpfs nr_inodes (the kernel default, half the RAM pages, applies)",
            ));
        }
        limits.push(status(
            LimitName::Timeout,
            format!("{}s", config.timeout.as_secs_f64()),
            Enforcement::Agent,
            "supervisor interrupts, then kills and replaces the interpreter",
        ));
        limits.push(status(
            LimitName::Network,
            if config.network { "on" } else { "off" }.into(),
            if config.network {
                Enforcement::Unenforced
            } else {
                Enforcement::Engine
            },
            if config.network {
                "network access enabled by configuration"
            } else {
                "no network interface but loopback (network mode none)"
            },
        ));
        let mut denied_syscalls = Vec::new();
        if !caps.uid_map.is_empty() {
            // In a rootless engine's user namespace, inotify and fanotify groups are also
            // charged to the engine's host user: one session could use up everyone's.
            denied_syscalls
                .extend(["inotify_init", "inotify_init1", "fanotify_init"].map(String::from));
        }
        limits.push(status(
            LimitName::Inotify,
            if caps.uid_map.is_empty() { "per session" } else { "none" }.into(),
            if gvisor {
                Enforcement::Engine
            } else {
                Enforcement::Agent
            },
            if gvisor {
                "gVisor's own kernel keeps them (and pseudo-terminals): no host counter is used; bounded by the sandbox's memory"
            } else if caps.uid_map.is_empty() {
                "counted per uid, and every session has a uid of its own"
            } else {
                "refused by the agent's seccomp filter (a rootless engine charges them to its own host user)"
            },
        ));
        if !caps.cgroup_limits || gvisor {
            // Shared memory made with memfd is bounded by no rlimit and no tmpfs size.
            denied_syscalls.push("memfd_create".into());
        }
        if gvisor {
            // gVisor ignores the IPC sysctls that bound SysV segments elsewhere.
            denied_syscalls.push("shmget".into());
        }
        if config
            .exposures
            .iter()
            .any(|e| e.mode == ExposureMode::ReadWrite)
        {
            limits.push(status(
                LimitName::ExposureSize,
                format!("{} each", format_size(config.rw_exposure_bytes)),
                Enforcement::Engine,
                "tmpfs size of each read-write exposure (ENOSPC); at most that much is copied back per run",
            ));
            limits.push(status(
                LimitName::ExposureFiles,
                format!("{} each", config.rw_exposure_files),
                if caps.tmpfs_inode_limit && !gvisor {
                    Enforcement::Engine
                } else {
                    Enforcement::Agent
                },
                if gvisor {
                    "copy-back stops at the cap; inside, gVisor's own tmpfs (runsc ignores nr_inodes: the files cost the sandbox's memory, bounded by the host's cgroup)"
                } else if caps.tmpfs_inode_limit {
                    "tmpfs nr_inodes of each read-write exposure (ENOSPC)"
                } else {
                    "copy-back stops at the cap (the engine refuses tmpfs nr_inodes)"
                },
            ));
        }
        Ok(LimitPlan {
            limits,
            rlimits,
            denied_syscalls,
            rootless: !caps.uid_map.is_empty(),
            cgroup_limits: caps.cgroup_limits,
            tmpfs_volumes: gvisor && caps.tmpfs_inode_limit,
            oci_runtime,
            memory_headroom,
            pids_headroom,
        })
    }

    /// The status of the named limit.
    pub fn get(&self, name: LimitName) -> Option<&LimitStatus> {
        self.limits.iter().find(|l| l.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(cgroup_limits: bool) -> Capabilities {
        Capabilities {
            engine: "test-engine".into(),
            engine_version: "1".into(),
            api_version: "1".into(),
            rootless: !cgroup_limits,
            cgroup_version: 1,
            cgroup_limits,
            tmpfs_inode_limit: cgroup_limits,
            uid_map: vec![],
            gid_map: vec![],
            gvisor_runtime: None,
        }
    }

    #[test]
    fn cgroup_engine_enforces_everything() {
        let plan = LimitPlan::new(&caps(true), &SandboxConfig::default()).unwrap();
        for name in [
            LimitName::Memory,
            LimitName::Pids,
            LimitName::Cpu,
            LimitName::Swap,
        ] {
            assert_eq!(plan.get(name).unwrap().enforcement, Enforcement::Engine);
        }
        assert!(plan.rlimits.is_empty());
        assert_eq!(
            plan.get(LimitName::Timeout).unwrap().enforcement,
            Enforcement::Agent
        );
    }

    #[test]
    fn without_cgroups_memory_and_pids_use_rlimits_and_cpu_is_refused() {
        let err = LimitPlan::new(&caps(false), &SandboxConfig::default()).unwrap_err();
        assert!(err.to_string().contains("memory"), "{err}");
        let config = SandboxConfig::builder()
            .allow_unenforced_limits(true)
            .build()
            .unwrap();
        let plan = LimitPlan::new(&caps(false), &config).unwrap();
        assert_eq!(
            plan.get(LimitName::Memory).unwrap().enforcement,
            Enforcement::Unenforced
        );
        assert_eq!(plan.rlimits["as"], (512 << 20) + ADDRESS_SPACE_HEADROOM);
        assert!(plan.denied_syscalls.contains(&"memfd_create".to_string()));
        assert_eq!(
            plan.get(LimitName::Pids).unwrap().enforcement,
            Enforcement::Rlimit
        );
        assert_eq!(
            plan.get(LimitName::Cpu).unwrap().enforcement,
            Enforcement::Unenforced
        );
        assert_eq!(plan.rlimits["data"], 512 << 20);
        assert_eq!(plan.rlimits["nproc"], 256);
    }

    #[test]
    fn ids_map_through_ranges() {
        let map = [
            IdMap {
                container_id: 0,
                host_id: 1001,
                size: 1,
            },
            IdMap {
                container_id: 1,
                host_id: 200000,
                size: 65536,
            },
        ];
        assert_eq!(map_id(&map, 0), Some(1001));
        assert_eq!(map_id(&map, 1000), Some(200999));
        assert_eq!(map_id(&map, 70000), None);
        assert_eq!(map_id(&[], 1000), Some(1000));
    }
}
