//! The in-container agent: its Python source (embedded) and how it is started.

use std::time::Duration;

/// Source of the agent, a stdlib-only Python 3.8+ program (see `agent/biocage_agent.py`).
pub const AGENT_SOURCE: &str = include_str!("../agent/biocage_agent.py");

/// Version of the protocol the embedded agent speaks.
pub const AGENT_VERSION: u64 = 1;

/// argv of the container's main process: the agent as PID 1, reaping orphans and
/// ending the container `orphan_grace` after its last supervisor went away.
pub fn init_argv(orphan_grace: Duration) -> Vec<String> {
    vec![
        "python3".into(),
        "-c".into(),
        AGENT_SOURCE.into(),
        "biocage-init".into(),
        format!("{}", orphan_grace.as_secs_f64()),
    ]
}

/// argv of the supervisor, whose stdin/stdout are the session's control channel.
pub fn serve_argv(config: &serde_json::Value) -> Vec<String> {
    vec![
        "python3".into(),
        "-c".into(),
        AGENT_SOURCE.into(),
        "biocage-serve".into(),
        config.to_string(),
    ]
}

/// argv of a one-off process that kills every process of the sandbox user but init:
/// used when the supervisor itself stopped answering.
pub fn kill_all_argv() -> Vec<String> {
    vec![
        "python3".into(),
        "-c".into(),
        "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError:\n    pass"
            .into(),
    ]
}
