//! BioCage sandboxes on Docker Engine, through bollard.
//!
//! [`DockerEngine`] implements [`biocage_core::Engine`]: it negotiates the API version
//! (Debian's Docker 20.10 speaks 1.41), honours `DOCKER_HOST`, creates hardened, labelled
//! containers from the core's spec (`body.rs`) and attaches the agent's control channel
//! with an exec. [`DockerRuntime`] is the core's runtime on it:
//! `DockerRuntime::connect().await?`.

#![deny(missing_docs)]

mod body;
mod engine;
mod image;

pub use engine::{DockerEngine, DockerRuntime, GVISOR_RUNTIME};

/// Engine name used in messages and reports.
pub const ENGINE: &str = "docker";
