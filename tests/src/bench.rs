//! What the benchmarks share: percentiles, milliseconds, the engines to measure and the
//! runtime they run on.

use std::time::Duration;

use crate::harness;

/// The `p` quantile (0..=1) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    // p is within 0..=1, so the index is within the slice.
    #[allow(clippy::cast_possible_truncation)]
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len().saturating_sub(1))]
}

/// A duration in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The configurations named among `args` ("docker", "docker+gvisor", "podman", ...; see
/// [`crate::matrix`]), else those of `BIOCAGE_TEST_ENGINES`, else docker.
pub fn engines(args: &[String]) -> Vec<String> {
    let named: Vec<String> = args
        .iter()
        .filter(|a| harness::CONFIGURATIONS.contains(&a.as_str()))
        .cloned()
        .collect();
    if !named.is_empty() {
        return named;
    }
    std::env::var(harness::ENGINES_VAR)
        .unwrap_or_else(|_| "docker".into())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The value after `flag` among `args`, parsed.
pub fn option<T: std::str::FromStr>(args: &[String], flag: &str) -> Option<T> {
    let at = args.iter().position(|a| a == flag)?;
    args.get(at + 1)?.parse().ok()
}

/// The runtime benchmarks run on: two workers, as the machine has two cores.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The engine's command line for configuration `engine`, for baselines: Podman through
/// the same API socket the sandboxes use (`podman --remote --url ...`).
pub fn engine_cli(engine: &str) -> std::process::Command {
    let podman = |sock: std::path::PathBuf| {
        let mut c = std::process::Command::new("podman");
        c.args(["--remote", "--url", &format!("unix://{}", sock.display())]);
        c
    };
    match engine.trim_end_matches("+gvisor") {
        "podman" => podman(
            biocage_podman::discover_socket()
                .into_iter()
                .find(|p| p.exists())
                .unwrap_or_default(),
        ),
        "podman-rootful" => podman(crate::matrix::PODMAN_ROOTFUL.into()),
        "podman5" => podman(crate::matrix::PODMAN5_ROOTLESS.into()),
        "podman5-rootful" => podman(crate::matrix::PODMAN5_ROOTFUL.into()),
        _ => std::process::Command::new("docker"),
    }
}

/// The `run` arguments that give a baseline container the configuration's isolation.
pub fn isolation_args(engine: &str) -> Vec<&'static str> {
    if engine.ends_with("+gvisor") {
        vec!["--runtime", biocage_docker::GVISOR_RUNTIME]
    } else {
        Vec::new()
    }
}
