//! Core of BioCage: a secure, stateful Python sandbox for model-generated code.
//!
//! This crate holds what every container engine shares: the [`SandboxRuntime`] and
//! [`Session`] traits that callers use as trait objects, the [`SandboxConfig`], the
//! [`ExecutionResult`] contract, typed [`Error`]s, and the in-container agent together
//! with the host side of its protocol ([`AgentSession`]). Engine backends (Docker,
//! Podman) only create containers and attach to processes in them, through
//! [`ContainerOps`].

#![deny(missing_docs)]

#[doc(hidden)]
pub mod agent;
#[doc(hidden)]
pub mod channel;
pub mod config;
pub mod container;
pub mod error;
pub mod image;
pub mod launch;
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

pub use config::{Exposure, ExposureMode, SandboxConfig, SandboxConfigBuilder};
pub use container::{AgentStreams, ContainerIdentity, ContainerLauncher, ContainerOps};
pub use error::{Error, Result};
pub use image::{BuildEvent, BuildOptions, BuiltImage, ImageDetails, Progress};
pub use launch::launch_session;
pub use limits::{Capabilities, Enforcement, IdMap, LimitPlan, LimitStatus};
pub use pool::{PoolOptions, PoolStats, SessionPool};
pub use result::{ErrorKind, ExecutionError, ExecutionResult, Image};
pub use runtime::{
    reap_orphans, InputStatus, RunEvent, RunOptions, SandboxRuntime, SandboxSummary, Session,
    SessionInfo,
};
pub use session::AgentSession;
pub use spec::{ContainerSpec, Rlimit, TmpfsMount, LABEL_MANAGED, LABEL_SESSION};
