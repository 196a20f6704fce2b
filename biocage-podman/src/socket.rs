//! Finding the Podman API socket the way users expect.

use std::path::PathBuf;

/// Candidate sockets, in order: `CONTAINER_HOST` (unix://...), then
/// `$XDG_RUNTIME_DIR/podman/podman.sock`, then `/run/user/UID/podman/podman.sock`.
pub fn discover_socket() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(host) = std::env::var("CONTAINER_HOST") {
        out.push(PathBuf::from(host.strip_prefix("unix://").unwrap_or(&host)));
    }
    if let Ok(dir) = std::env::var("XDG_RUNTIME_DIR") {
        out.push(PathBuf::from(dir).join("podman/podman.sock"));
    }
    out.push(PathBuf::from(format!(
        "/run/user/{}/podman/podman.sock",
        current_uid()
    )));
    out.dedup();
    out
}

fn current_uid() -> u32 {
    // The owner of /proc/self is this process's uid; no libc call needed.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(0)
}

/// The command that starts a rootless API socket at the default place.
pub(crate) fn start_hint() -> String {
    "Start the Podman API service as the user that runs the sandboxes: `systemctl --user start podman.socket`, or `podman system service --time=0 unix://$XDG_RUNTIME_DIR/podman/podman.sock &` (as root on this project's machines: scripts/setup.sh podman), or set CONTAINER_HOST=unix:///path/to/podman.sock".to_string()
}
