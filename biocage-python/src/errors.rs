//! From BioCage's errors to the Python exceptions of `biocage.errors`.
//!
//! The exception classes are defined in Python (so that they can also derive from
//! `ValueError` or `TimeoutError` where that helps callers); this module raises them
//! with the core's message, and sets the details as attributes.

use biocage_core::Error;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;

/// What went wrong in a call, before it becomes a Python exception (which needs the GIL).
#[derive(Debug)]
pub(crate) enum Failure {
    /// An error of the engine backends or the core.
    Core(Error),
    /// No engine answered to `runtime="auto"`.
    NoEngine(String),
    /// A bug or an impossible state in the extension itself.
    Internal(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Core(e)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Core(e) => write!(f, "{e}"),
            Failure::NoEngine(m) | Failure::Internal(m) => f.write_str(m),
        }
    }
}

static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn errors_module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    Ok(ERRORS
        .get_or_try_init(py, || py.import("biocage.errors").map(Bound::unbind))?
        .bind(py))
}

/// The Python class name for `failure`, and the attributes to set on the exception.
fn class_of(failure: &Failure) -> (&'static str, Vec<(&'static str, String)>) {
    match failure {
        Failure::Core(e) => match e {
            Error::EngineUnreachable {
                engine,
                endpoint,
                reason,
                hint,
            } => (
                "EngineUnavailableError",
                vec![
                    ("engine", engine.clone()),
                    ("endpoint", endpoint.clone()),
                    ("reason", reason.clone()),
                    ("hint", hint.clone()),
                ],
            ),
            Error::ImageMissing {
                image,
                engine,
                build_command,
            } => (
                "ImageMissingError",
                vec![
                    ("image", image.clone()),
                    ("engine", engine.clone()),
                    ("build_command", build_command.clone()),
                ],
            ),
            Error::InvalidConfig {
                field,
                value,
                reason,
            } => (
                "InvalidConfigError",
                vec![
                    ("field", (*field).to_string()),
                    ("value", value.clone()),
                    ("reason", reason.clone()),
                ],
            ),
            Error::UnenforceableLimit {
                limit,
                engine,
                reason,
            } => (
                "UnenforceableLimitError",
                vec![
                    ("limit", (*limit).to_string()),
                    ("engine", engine.clone()),
                    ("reason", reason.clone()),
                ],
            ),
            Error::Engine {
                engine,
                action,
                source,
            } => (
                "EngineError",
                vec![
                    ("engine", engine.clone()),
                    ("action", action.clone()),
                    ("reason", source.to_string()),
                ],
            ),
            Error::Agent(_) => ("AgentError", vec![]),
            Error::FileTransfer(_) => ("FileTransferError", vec![]),
            Error::SessionClosed => ("SessionClosedError", vec![]),
            Error::SandboxGone { .. } => ("SandboxGoneError", vec![]),
            _ => ("BioCageError", vec![]),
        },
        Failure::NoEngine(_) => ("EngineUnavailableError", vec![("engine", "auto".into())]),
        Failure::Internal(_) => ("BioCageError", vec![]),
    }
}

impl Failure {
    /// The Python exception: a `biocage.errors` class with the core's message.
    pub(crate) fn into_pyerr(self, py: Python<'_>) -> PyErr {
        let message = self.to_string();
        let (class, attrs) = class_of(&self);
        let made = (|| -> PyResult<PyErr> {
            let cls = errors_module(py)?.getattr(class)?;
            let exc = cls.call1((message.clone(),))?;
            for (name, value) in attrs {
                exc.setattr(name, value)?;
            }
            Ok(PyErr::from_value(exc))
        })();
        // Only if biocage.errors itself cannot be imported: still the same message.
        made.unwrap_or_else(|_| PyRuntimeError::new_err(message))
    }
}

/// Converts a result of the core into a Python result.
pub(crate) fn py_result<T>(py: Python<'_>, r: Result<T, Failure>) -> PyResult<T> {
    r.map_err(|f| f.into_pyerr(py))
}
