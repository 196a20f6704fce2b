//! BioCage sandboxes on rootless Podman, through its libpod API (podman-api).
//!
//! [`PodmanRuntime`] implements [`biocage_core::SandboxRuntime`]. The session path uses
//! only calls that work on Podman 4 and 5 alike (create, start, exec create/start,
//! list, delete): podman-api's typed container inspect and attach break on Podman 5.
//! Where rootless Podman cannot apply cgroup limits (cgroup v1), memory and processes
//! are bounded by rlimits set by the agent, and that is reported per limit.

#![deny(missing_docs)]

mod container;
mod create;
mod image;
mod runtime;
mod socket;

pub use runtime::PodmanRuntime;
pub use socket::discover_socket;

/// Engine name used in messages and reports.
pub const ENGINE: &str = "podman";
