//! The behaviours every backend must show, one module per area.

pub mod crashes;
pub mod errors;
pub mod fidelity;
pub mod files;
pub mod host;
pub mod hostile;
pub mod lifecycle;
pub mod limits;
pub mod load;
pub mod output;
pub mod resources;
pub mod scale;
pub mod security;
pub mod state;
pub mod timeouts;
