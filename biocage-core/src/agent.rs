//! The in-container agent: its Python source (embedded) and how it is started.

use std::time::Duration;

/// Source of the agent, a stdlib-only Python 3.8+ program (see `agent/biocage_agent.py`).
pub const AGENT_SOURCE: &str = include_str!("../agent/biocage_agent.py");

/// Source of the container's init (PID 1): reaps orphans and ends the container once no
/// supervisor is left (see `agent/biocage_init.py`); small, since every sandbox runs one.
pub const INIT_SOURCE: &str = include_str!("../agent/biocage_init.py");

/// Version of the protocol the embedded agent speaks.
pub const AGENT_VERSION: u64 = 2;

/// The interpreter and its flags for every agent process: isolated mode (-I) puts
/// neither the working directory nor the user site on sys.path and ignores PYTHON*
/// variables, so nothing sandbox code writes is imported by an agent process.
const PYTHON: [&str; 2] = ["python3", "-I"];

/// argv of the container's main process: the agent as PID 1, reaping orphans and
/// ending the container `orphan_grace` after its last supervisor went away; started as
/// root, it drops to `agent_uid` when given.
pub fn init_argv(orphan_grace: Duration, agent_uid: Option<u32>) -> Vec<String> {
    let mut argv: Vec<String> = vec![
        PYTHON[0].into(),
        PYTHON[1].into(),
        // No `site`: nothing but what init needs is loaded.
        "-S".into(),
        "-c".into(),
        INIT_SOURCE.into(),
        "biocage-init".into(),
        format!("{}", orphan_grace.as_secs_f64()),
    ];
    argv.extend(agent_uid.map(|u| u.to_string()));
    argv
}

/// argv of the supervisor, whose stdin/stdout are the session's control channel.
pub fn serve_argv(config: &serde_json::Value) -> Vec<String> {
    vec![
        PYTHON[0].into(),
        PYTHON[1].into(),
        "-c".into(),
        AGENT_SOURCE.into(),
        "biocage-serve".into(),
        config.to_string(),
    ]
}
