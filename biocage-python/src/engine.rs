//! One tokio runtime per process, and the engine connections made in it.
//!
//! Both are made on first use and kept for the life of the process, so a sandbox after
//! the first one costs no reconnection (nor a second sweep of orphaned sandboxes). A
//! process made by `fork` (multiprocessing) starts with neither: the parent's runtime
//! threads do not exist in the child, so the child makes its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use biocage_core::{Error, SandboxRuntime};
use tokio::runtime::Runtime;

use crate::errors::Failure;

/// Which engine a caller asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Choice {
    /// Docker Engine (`DOCKER_HOST`, else the local socket).
    Docker,
    /// Podman's API socket (`CONTAINER_HOST`, else the rootless default).
    Podman,
    /// Docker if it answers, else Podman.
    Auto,
}

impl Choice {
    /// Parses "docker", "podman" or "auto" (any case).
    pub(crate) fn parse(text: &str) -> Result<Self, Failure> {
        match text.trim().to_ascii_lowercase().as_str() {
            "docker" => Ok(Choice::Docker),
            "podman" => Ok(Choice::Podman),
            "auto" | "" => Ok(Choice::Auto),
            _ => Err(Failure::Core(Error::InvalidConfig {
                field: "runtime",
                value: text.to_string(),
                reason: "must be \"docker\", \"podman\" or \"auto\" (Docker, then Podman)".into(),
            })),
        }
    }

    /// The variable that says where this engine is; a connection is kept per value.
    fn endpoint_var(self) -> String {
        let var = |name: &str| std::env::var(name).unwrap_or_default();
        match self {
            Choice::Docker => var("DOCKER_HOST"),
            Choice::Podman => format!("{}|{}", var("CONTAINER_HOST"), var("XDG_RUNTIME_DIR")),
            Choice::Auto => format!(
                "{}|{}|{}",
                var("DOCKER_HOST"),
                var("CONTAINER_HOST"),
                var("XDG_RUNTIME_DIR")
            ),
        }
    }
}

/// An engine connection shared by every sandbox of the process.
pub(crate) type Engine = Arc<dyn SandboxRuntime>;

struct Process {
    pid: u32,
    runtime: &'static Runtime,
    engines: tokio::sync::Mutex<HashMap<(Choice, String), Engine>>,
}

static PROCESS: Mutex<Option<&'static Process>> = Mutex::new(None);

fn process() -> Result<&'static Process, Failure> {
    let pid = std::process::id();
    let mut slot = PROCESS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = *slot {
        if p.pid == pid {
            return Ok(p);
        }
    }
    // First use, or a forked child: a runtime of this process's own. A parent's runtime
    // is left as it is (leaked): its threads are not in this process.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("biocage-rt")
        .enable_all()
        .build()
        .map_err(|e| Failure::Internal(format!("cannot start the async runtime: {e}")))?;
    let p: &'static Process = Box::leak(Box::new(Process {
        pid,
        runtime: Box::leak(Box::new(runtime)),
        engines: tokio::sync::Mutex::new(HashMap::new()),
    }));
    *slot = Some(p);
    Ok(p)
}

/// The process's tokio runtime.
pub(crate) fn runtime() -> Result<&'static Runtime, Failure> {
    Ok(process()?.runtime)
}

/// True when `pid` is this process (sessions made before a fork belong to the parent).
pub(crate) fn is_this_process(pid: u32) -> bool {
    pid == std::process::id()
}

/// The engine for `choice`, connecting on first use (Docker, then Podman, for `Auto`).
pub(crate) async fn connect(choice: Choice) -> Result<Engine, Failure> {
    let process = process()?;
    let key = (choice, choice.endpoint_var());
    let mut engines = process.engines.lock().await;
    if let Some(e) = engines.get(&key) {
        return Ok(e.clone());
    }
    let engine: Engine = match choice {
        Choice::Docker => Arc::new(biocage_docker::DockerRuntime::connect().await?),
        Choice::Podman => Arc::new(biocage_podman::PodmanRuntime::connect().await?),
        Choice::Auto => match biocage_docker::DockerRuntime::connect().await {
            Ok(rt) => {
                tracing::info!("runtime auto: picked docker at {}", rt.endpoint());
                Arc::new(rt)
            }
            Err(docker) => match biocage_podman::PodmanRuntime::connect().await {
                Ok(rt) => {
                    tracing::info!(
                        "runtime auto: docker unavailable, picked podman at {}",
                        rt.endpoint()
                    );
                    Arc::new(rt)
                }
                Err(podman) => {
                    return Err(Failure::NoEngine(format!(
                        "no container engine answered. {docker}; {podman}"
                    )))
                }
            },
        },
    };
    // Once per engine and process: sandboxes whose owners are gone are removed.
    biocage_core::reap_orphans(engine.as_ref()).await;
    engines.insert(key, engine.clone());
    Ok(engine)
}

/// How many cpus the engine can give one container on this host (the cpus this process
/// may run on): Docker refuses a limit above it, so a larger one is held at it.
pub(crate) fn host_cpus() -> f64 {
    // SAFETY: sched_getaffinity writes at most size_of::<cpu_set_t>() bytes into `set`,
    // which is a plain bit set for which all-zero is a valid value.
    let counted = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            Some(libc::CPU_COUNT(&set))
        } else {
            None
        }
    };
    match counted {
        Some(n) if n > 0 => f64::from(n),
        _ => std::thread::available_parallelism()
            .ok()
            .and_then(|n| u32::try_from(n.get()).ok())
            .map_or(1.0, f64::from),
    }
}
