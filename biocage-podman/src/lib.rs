//! BioCage sandboxes on Podman (rootless or rootful), through its libpod API (podman-api).
//!
//! [`PodmanEngine`] implements [`biocage_core::Engine`]; [`PodmanRuntime`] is the core's
//! runtime on it: `PodmanRuntime::connect().await?` finds the socket as users expect
//! ([`discover_socket`]), `PodmanRuntime::new(PodmanEngine::connect_to(path).await?)` takes
//! one. The session path uses only calls that work on Podman 4 and 5 alike. Where rootless
//! Podman cannot apply cgroup limits (cgroup v1), memory and processes are bounded by
//! rlimits set by the agent, and that is reported per limit.

#![deny(missing_docs)]

mod create;
mod engine;
mod gvisor;
mod image;
mod socket;
mod volumes;

pub use engine::{PodmanEngine, PodmanRuntime};
pub use socket::discover_socket;

/// Engine name used in messages and reports.
pub const ENGINE: &str = "podman";
