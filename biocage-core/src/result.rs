//! The result of one run: a stable JSON contract (snake_case).

use serde::{Deserialize, Serialize};

/// Why a run did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// User code raised an exception (state kept).
    Exception,
    /// The run hit its time limit.
    Timeout,
    /// The run ran out of memory.
    Oom,
    /// The interpreter died (exit, signal); earlier state is lost.
    Crashed,
    /// The sandbox itself failed (agent or engine).
    Sandbox,
    /// The code called `sys.exit()` with a non-zero status (`exit_code` is that status);
    /// the run ended, the session and its state did not.
    Exit,
}

/// Details of a failed run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionError {
    /// The category.
    pub kind: ErrorKind,
    /// Exception type or signal name, where there is one ("ValueError", "SIGSEGV").
    #[serde(default)]
    pub name: Option<String>,
    /// Human-readable message.
    #[serde(default)]
    pub message: String,
    /// Traceback starting at the user's code, where there is one.
    #[serde(default)]
    pub traceback: Option<String>,
    /// Line of a SyntaxError.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// Column (1-based) of a SyntaxError.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u32>,
    /// The message or the traceback went over its cap and was cut.
    #[serde(default)]
    pub truncated: bool,
}

/// An image produced by a run (e.g. a matplotlib figure).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// MIME type, "image/png".
    pub mime: String,
    /// Base64 of the image bytes.
    pub data: String,
}

/// Most characters of the last expression's repr in a result.
pub const VALUE_CAP: usize = 64 << 10;
/// Most characters of an error message in a result.
pub const MESSAGE_CAP: usize = 64 << 10;
/// Most characters of a traceback in a result.
pub const TRACEBACK_CAP: usize = 256 << 10;
/// Most figures in a result.
pub const MAX_IMAGES: usize = 16;
/// Most bytes of figures (PNG, before base64) in a result.
pub const MAX_IMAGE_BYTES: usize = 8 << 20;
/// Most entries in a result's `displays`.
pub const MAX_DISPLAYS: usize = 32;
/// Most characters of all displays of a result together.
pub const MAX_DISPLAY_BYTES: usize = 8 << 20;
/// Most pixels rendered for the figures of one result (their size bounds the time
/// rendering takes after the run).
pub const MAX_IMAGE_PIXELS: u64 = 16_000_000;

/// Exit code of a successful run.
pub const EXIT_OK: i32 = 0;
/// Exit code of a run that raised.
pub const EXIT_EXCEPTION: i32 = 1;
/// Exit code of a run that timed out.
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit code of a run that was killed or ran out of memory.
pub const EXIT_KILLED: i32 = 137;

/// What one run produced. Field names and meanings are a stable contract; fields
/// may be added, none will change meaning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionResult {
    /// True when the code ran to the end without raising.
    pub success: bool,
    /// Everything written to stdout (fd 1), up to the output cap.
    pub stdout: String,
    /// Everything written to stderr (fd 2), up to the output cap.
    pub stderr: String,
    /// 0 ok, 1 exception, 124 timeout, 137 killed or out of memory.
    pub exit_code: i32,
    /// Wall time of the run, in seconds.
    pub execution_time: f64,
    /// Null on success; what went wrong otherwise.
    pub error: Option<ExecutionError>,
    /// True when the interpreter was replaced and earlier state is gone.
    pub state_lost: bool,
    /// stdout went over the cap and was cut.
    pub stdout_truncated: bool,
    /// stderr went over the cap and was cut.
    pub stderr_truncated: bool,
    /// repr() of the value of the last expression, if it had one that is not None.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Figures the run left open, as images.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<Image>,
    /// Figures were left out: over the count, size or pixel caps.
    #[serde(default)]
    pub images_truncated: bool,
    /// Rich output, in order: each `display(obj)` call, then the last expression's value;
    /// each entry maps MIME types (text/plain always; text/html, text/markdown,
    /// image/svg+xml, application/json (as JSON text), image/png (base64) where the object
    /// offers them) to data.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub displays: Vec<std::collections::BTreeMap<String, String>>,
    /// Displays or forms of them were left out: over their caps.
    #[serde(default)]
    pub displays_truncated: bool,
    /// The value's repr went over its cap and was cut.
    #[serde(default)]
    pub value_truncated: bool,
}

impl ExecutionResult {
    /// True when the run succeeded.
    pub fn success(&self) -> bool {
        self.success
    }

    /// The error kind, if the run failed.
    pub fn error_kind(&self) -> Option<ErrorKind> {
        self.error.as_ref().map(|e| e.kind)
    }

    /// The result as a JSON string.
    pub fn to_json(&self) -> String {
        // Serializing plain strings, numbers and options cannot fail.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// Parses a result from JSON.
    pub fn from_json(text: &str) -> serde_json::Result<Self> {
        serde_json::from_str(text)
    }

    /// A failed result for a problem of the sandbox itself (not the user's code).
    pub fn sandbox_failure(message: impl Into<String>, state_lost: bool) -> Self {
        ExecutionResult {
            success: false,
            stdout: String::new(),
            stderr: String::new(),
            exit_code: EXIT_KILLED,
            execution_time: 0.0,
            error: Some(ExecutionError {
                kind: ErrorKind::Sandbox,
                name: None,
                message: message.into(),
                traceback: None,
                line: None,
                offset: None,
                truncated: false,
            }),
            state_lost,
            stdout_truncated: false,
            stderr_truncated: false,
            value: None,
            images: Vec::new(),
            images_truncated: false,
            displays: Vec::new(),
            displays_truncated: false,
            value_truncated: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_keeps_every_field() {
        let r = ExecutionResult {
            success: false,
            stdout: "out\n".into(),
            stderr: "Traceback...".into(),
            exit_code: 1,
            execution_time: 0.25,
            error: Some(ExecutionError {
                kind: ErrorKind::Exception,
                name: Some("ValueError".into()),
                message: "bad".into(),
                traceback: Some("tb".into()),
                line: None,
                offset: None,
                truncated: false,
            }),
            state_lost: false,
            stdout_truncated: true,
            stderr_truncated: false,
            value: None,
            images: vec![],
            images_truncated: false,
            displays: vec![],
            displays_truncated: false,
            value_truncated: false,
        };
        let json = r.to_json();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        for key in [
            "success",
            "stdout",
            "stderr",
            "exit_code",
            "execution_time",
            "error",
            "state_lost",
            "stdout_truncated",
            "stderr_truncated",
        ] {
            assert!(v.get(key).is_some(), "missing {key} in {json}");
        }
        assert_eq!(v["error"]["kind"], "exception");
        assert_eq!(ExecutionResult::from_json(&json).unwrap(), r);
        assert!(!r.success());
        assert_eq!(r.error_kind(), Some(ErrorKind::Exception));
    }

    #[test]
    fn success_has_null_error() {
        let mut r = ExecutionResult::sandbox_failure("x", false);
        r.success = true;
        r.error = None;
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert!(v["error"].is_null());
    }

    #[test]
    fn kinds_are_snake_case() {
        for (k, s) in [
            (ErrorKind::Exception, "\"exception\""),
            (ErrorKind::Timeout, "\"timeout\""),
            (ErrorKind::Oom, "\"oom\""),
            (ErrorKind::Crashed, "\"crashed\""),
            (ErrorKind::Sandbox, "\"sandbox\""),
        ] {
            assert_eq!(serde_json::to_string(&k).unwrap(), s);
        }
    }
}
