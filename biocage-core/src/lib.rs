//! Core of BioCage: a secure, stateful Python sandbox for model-generated code.
//!
//! This crate holds what every container engine shares: the [`SandboxRuntime`] and
//! [`Session`] traits that callers use as trait objects, the [`SandboxConfig`], the
//! [`ExecutionResult`] contract, typed [`Error`]s, and the in-container agent together
//! with the host side of its protocol ([`AgentSession`]), and [`EngineRuntime`], the one
//! runtime built on any [`Engine`]. Engine backends (Docker, Podman) implement only
//! [`Engine`]: a few engine calls, and the mapping of the container spec to their API.

#![deny(missing_docs)]

#[doc(hidden)]
pub mod agent;
#[doc(hidden)]
pub mod channel;
pub mod config;
pub mod container;
pub mod engine;
mod engine_runtime;
pub mod error;
mod hostfs;
pub mod image;
mod launch;
pub mod limits;
mod mirror;
pub mod pool;
#[doc(hidden)]
pub mod protocol;
pub mod result;
pub mod runtime;
pub mod session;
pub mod size;
#[doc(hidden)]
pub mod spec;
#[doc(hidden)]
pub mod staging;
pub mod uids;

pub use config::{Exposure, ExposureMode, Isolation, SandboxConfig, SandboxConfigBuilder};
pub use container::{AgentStreams, ContainerIdentity, ContainerOps, ExecFrame};
pub use engine::{BuildChunk, Connect, ContainerEntry, ContainerState, Engine};
pub use engine_runtime::EngineRuntime;
pub use error::{Error, Result};
pub use image::{BuildEvent, BuildOptions, BuiltImage, ImageDetails, Progress};
pub use limits::{Capabilities, Enforcement, IdMap, LimitName, LimitPlan, LimitStatus};
pub use pool::{PoolOptions, PoolStats, SessionPool};
pub use result::{ErrorKind, ExecutionError, ExecutionResult, Image};
pub use runtime::{
    owner_alive, reap_orphans, InputStatus, RunEvent, RunOptions, SandboxRuntime, SandboxSummary,
    Session, SessionInfo,
};
pub use session::AgentSession;
pub use spec::{ContainerSpec, Rlimit, TmpfsMount, LABEL_MANAGED, LABEL_SESSION};
