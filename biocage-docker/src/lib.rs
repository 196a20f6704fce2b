//! BioCage sandboxes on Docker Engine, through bollard.
//!
//! [`DockerRuntime`] implements [`biocage_core::SandboxRuntime`]: it negotiates the API
//! version (Debian's Docker 20.10 speaks 1.41), honours `DOCKER_HOST`, creates hardened,
//! labelled containers and attaches the agent's control channel with an exec.

#![deny(missing_docs)]

mod body;
mod container;
mod image;
mod runtime;

pub use runtime::DockerRuntime;

/// Engine name used in messages and reports.
pub const ENGINE: &str = "docker";
