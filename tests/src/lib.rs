//! The conformance suite: behaviours written once as functions over
//! `&dyn SandboxRuntime`, instantiated for every backend in `tests/conformance.rs`.
//!
//! Configurations under test come from `BIOCAGE_TEST_ENGINES` (comma-separated, e.g.
//! `docker,podman,docker+gvisor,podman5,podman5-rootful`; see [`matrix`]). A listed engine that cannot be reached fails its tests; without
//! the variable, engine tests skip with one loud line each.

#![deny(missing_docs)]

pub mod bench;
pub mod cases;
pub mod harness;
pub mod matrix;
