//! A Model Context Protocol server that gives language-model applications a BioCage
//! sandbox as their Python tool (`biocage mcp`).
//!
//! Each client connection gets one sandbox session of its own (over stdio: the process;
//! over streamable HTTP: the MCP session), started on first use or taken from a
//! [`biocage_core::SessionPool`], and removed when the client goes away, also when it
//! vanishes in the middle of a run. The tools (`run_python`, `reset_session`,
//! `interrupt`, `write_file`, `read_file`, `list_files`, `session_info`) are described
//! for a model to read: what persists, the limits, that there is no network, where
//! files are.
//!
//! ```no_run
//! # async fn demo(rt: std::sync::Arc<dyn biocage_core::SandboxRuntime>) -> Result<(), Box<dyn std::error::Error>> {
//! let config = biocage_core::SandboxConfig::builder().build()?;
//! let backend = biocage_mcp::Backend::new(rt, config, biocage_mcp::ServerOptions::default()).await?;
//! biocage_mcp::serve_stdio(backend, std::future::pending()).await?;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod handler;
mod http;
mod render;
mod sandbox;
mod stdio;
mod tools;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use biocage_core::{PoolOptions, SandboxConfig, SandboxRuntime, Session, SessionPool};

pub use http::{parse_listen_addr, serve_http, HttpOptions};
pub use stdio::serve_stdio;

/// How the server treats every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerOptions {
    /// Sandboxes kept started so that a client's first call (and a `reset_session`)
    /// gets one at once; 0 starts each on first use.
    pub pool: usize,
    /// Longest time limit a client may ask for in one `run_python` call.
    pub max_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            pool: 0,
            max_timeout: Duration::from_secs(600),
        }
    }
}

impl ServerOptions {
    /// Keeps `n` sandboxes started (0: none).
    pub fn pool(mut self, n: usize) -> Self {
        self.pool = n;
        self
    }

    /// Sets the longest time limit a client may ask for in one run.
    pub fn max_timeout(mut self, t: Duration) -> Self {
        self.max_timeout = t;
        self
    }
}

/// A failure of the server itself (not of a tool call, which is reported to the client).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The sandbox configuration, the engine or the image is not usable.
    #[error(transparent)]
    Sandbox(#[from] biocage_core::Error),
    /// The HTTP address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// The options are contradictory or out of range.
    #[error("{0}")]
    Options(String),
    /// The transport failed.
    #[error("the MCP transport failed: {0}")]
    Transport(String),
}

/// The largest message a client may send: enough for the largest code of a run and
/// for the largest file transfer in base64, with room for JSON's escapes.
pub(crate) fn request_limit(config: &SandboxConfig) -> usize {
    let code = config.max_code_bytes.saturating_mul(2);
    let file = usize::try_from(config.max_transfer_bytes / 3 * 4).unwrap_or(usize::MAX);
    code.max(file).saturating_add(1 << 20).max(4 << 20)
}

/// What every client's sandbox is made from: the engine, the configuration (the same
/// as `biocage run`'s), an optional pool of started sessions, and the tool
/// descriptions written from them.
pub struct Backend {
    rt: Arc<dyn SandboxRuntime>,
    config: SandboxConfig,
    opts: ServerOptions,
    pool: Mutex<Option<Arc<SessionPool>>>,
    tools: Vec<rmcp::model::Tool>,
    instructions: String,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("engine", &self.rt.name())
            .field("image", &self.config.image)
            .field("opts", &self.opts)
            .finish()
    }
}

impl Backend {
    /// Checks the configuration against the engine now (limits that cannot be
    /// enforced, a missing image), so that a server that cannot make sandboxes fails at
    /// start and not at the first tool call; starts the pool when one is asked for.
    pub async fn new(
        rt: Arc<dyn SandboxRuntime>,
        config: SandboxConfig,
        opts: ServerOptions,
    ) -> Result<Arc<Self>, ServeError> {
        config.validate()?;
        if opts.max_timeout.is_zero() || opts.max_timeout > biocage_core::config::MAX_TIMEOUT {
            return Err(ServeError::Options(format!(
                "the longest run time limit must be above 0 and at most {} seconds",
                biocage_core::config::MAX_TIMEOUT.as_secs()
            )));
        }
        rt.limit_plan(&config).await?;
        if !rt.image_exists(&config.image).await? {
            return Err(ServeError::Sandbox(biocage_core::Error::ImageMissing {
                image: config.image.clone(),
                engine: rt.name().to_string(),
                build_command: "biocage image build".into(),
            }));
        }
        let pool = match opts.pool {
            0 => None,
            n => Some(Arc::new(
                SessionPool::new(rt.clone(), config.clone(), PoolOptions::new(n)).await?,
            )),
        };
        let max_timeout = opts.max_timeout.max(config.timeout);
        let opts = ServerOptions {
            max_timeout,
            ..opts
        };
        let tools = tools::list(&config, &opts, rt.name());
        let instructions = tools::instructions(&config, &opts, rt.name());
        Ok(Arc::new(Backend {
            rt,
            config,
            opts,
            pool: Mutex::new(pool),
            tools,
            instructions,
        }))
    }

    /// The engine's name ("docker", "podman").
    pub fn engine(&self) -> &str {
        self.rt.name()
    }

    /// The configuration every sandbox is made with.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// A fresh session: from the pool when there is one, else started now.
    async fn start_session(&self) -> biocage_core::Result<Box<dyn Session>> {
        let pool = self.pool.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match pool {
            Some(p) => p.acquire().await,
            None => self.rt.create_session(&self.config).await,
        }
    }

    /// Whether sessions come from a pool (a reset then hands over a new sandbox).
    fn pooled(&self) -> bool {
        self.opts.pool > 0
    }

    /// Stops the pool, closing the sessions it holds ready.
    async fn shutdown_pool(&self) {
        let pool = self.pool.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(pool) = pool {
            match Arc::try_unwrap(pool) {
                Ok(pool) => pool.shutdown().await,
                // Someone is acquiring right now; dropping it closes what it holds.
                Err(shared) => drop(shared),
            }
        }
    }
}
