//! Typed errors: each says what failed and what to do about it.

/// A cause kept inside an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The result type of every fallible BioCage operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong outside the user's own code. Failures *of* user code
/// (exceptions, timeouts, crashes) are not errors: they are [`crate::ExecutionResult`]s.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The container engine did not answer.
    #[error("cannot reach {engine} at {endpoint}: {reason}. {hint}")]
    EngineUnreachable {
        /// Engine name ("docker", "podman").
        engine: String,
        /// Where it was looked for.
        endpoint: String,
        /// What the connection attempt said.
        reason: String,
        /// What to run to make it reachable.
        hint: String,
    },
    /// The sandbox image is not present in the engine.
    #[error("image {image} is not present in {engine}; build it with `{build_command}`")]
    ImageMissing {
        /// The image reference that was asked for.
        image: String,
        /// Engine name.
        engine: String,
        /// The command that builds it.
        build_command: String,
    },
    /// A configuration value is out of range or malformed.
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidConfig {
        /// Which setting.
        field: &'static str,
        /// The value given.
        value: String,
        /// Why it is refused, and what is accepted.
        reason: String,
    },
    /// A limit was asked for that this backend cannot enforce by any mechanism.
    #[error("the {limit} limit cannot be enforced on {engine}: {reason}; allow it explicitly with allow_unenforced_limits (CLI: --allow-unenforced) to start anyway")]
    UnenforceableLimit {
        /// The limit.
        limit: crate::limits::LimitName,
        /// Engine name.
        engine: String,
        /// Why not.
        reason: String,
    },
    /// The isolation asked for is not available on this engine.
    #[error("{isolation} isolation is not available on {engine}: {reason}. {hint}")]
    IsolationUnavailable {
        /// The isolation asked for.
        isolation: crate::config::Isolation,
        /// Engine name.
        engine: String,
        /// Why not.
        reason: String,
        /// What to install or configure.
        hint: String,
    },
    /// An image build failed: a package could not be installed, or the image lacks one
    /// that was asked for. The reason quotes pip's own error line when there is one.
    #[error("building {image} failed: {reason}")]
    BuildFailed {
        /// The image being built.
        image: String,
        /// What went wrong, and what to do.
        reason: String,
    },
    /// The engine refused or failed an operation.
    #[error("{engine} failed while {action}: {source}")]
    Engine {
        /// Engine name.
        engine: String,
        /// What BioCage was doing.
        action: String,
        /// The engine's error, kept as it came.
        #[source]
        source: BoxError,
    },
    /// A container, session or image the caller named does not exist.
    #[error("{what} {name} was not found on {engine}")]
    NotFound {
        /// Engine name.
        engine: String,
        /// "container", "image", ...
        what: &'static str,
        /// The name or id that was asked for.
        name: String,
    },
    /// The agent in the container misbehaved or could not be started.
    #[error("sandbox agent: {0}")]
    Agent(String),
    /// A file transfer was refused or failed.
    #[error("file transfer: {0}")]
    FileTransfer(String),
    /// The session was closed; open a new one.
    #[error("the session is closed; create a new session")]
    SessionClosed,
    /// The session's sandbox is gone (removed, killed, or lost with its engine), and
    /// with it the interpreter's state; the session's next request starts a fresh one.
    #[error("the sandbox {container} is gone (removed, killed, or lost with its engine) and its state with it; the next request (or a restart) starts a fresh sandbox")]
    SandboxGone {
        /// The container that is gone.
        container: String,
    },
    /// A host-side I/O error.
    #[error("I/O error while {action}: {source}")]
    Io {
        /// What BioCage was doing.
        action: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// An [`Error::Engine`] for `engine` while doing `action`, keeping `source` (an
    /// error of the engine's client, or a message) as the cause.
    pub fn engine(engine: &str, action: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Engine {
            engine: engine.to_string(),
            action: action.into(),
            source: source.into(),
        }
    }

    /// An [`Error::Io`] while doing `action`.
    pub fn io(action: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            action: action.into(),
            source,
        }
    }
}
