//! Exit codes, and turning errors into one clear line.

use biocage_core::Error;

/// Success.
pub(crate) const OK: i32 = 0;
/// The command's work failed (e.g. an image build: a package could not be installed).
pub(crate) const FAILED: i32 = 1;
/// Usage error: bad arguments, unreadable input, bad configuration.
pub(crate) const USAGE: i32 = 2;
/// The engine (or the image in it) is unavailable.
pub(crate) const UNAVAILABLE: i32 = 69;

/// A failure of the command itself (not of the user's code).
#[derive(Debug)]
pub(crate) struct CliError {
    /// Process exit code.
    pub code: i32,
    /// One sentence: what went wrong and what to do.
    pub message: String,
}

impl CliError {
    /// A usage error.
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        CliError {
            code: USAGE,
            message: message.into(),
        }
    }
}

impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::InvalidConfig { .. }
            | Error::UnenforceableLimit { .. }
            | Error::IsolationUnavailable { .. }
            | Error::FileTransfer(_) => USAGE,
            Error::BuildFailed { .. } => FAILED,
            _ => UNAVAILABLE,
        };
        CliError {
            code,
            message: e.to_string(),
        }
    }
}
