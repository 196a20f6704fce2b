//! Picking the engines under test, and small helpers shared by the cases.

use std::time::Duration;

pub use crate::matrix::CONFIGURATIONS;
use biocage_core::{Capabilities, ExecutionResult, SandboxConfig, SandboxRuntime, Session};

/// The variable naming the engines that must be tested.
pub const ENGINES_VAR: &str = "BIOCAGE_TEST_ENGINES";

/// Says once per test process, past the test harness's output capture, that engine
/// tests were skipped.
pub fn skip_loudly(line: &str) {
    use std::io::Write;
    static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut said = SAID.lock().unwrap_or_else(|e| e.into_inner());
    if !said.iter().any(|l| l == line) {
        said.push(line.to_string());
        let _ = writeln!(std::io::stderr(), "{line}");
    }
}

/// Logs of the library on the test's output, filtered by `BIOCAGE_LOG` (default: warnings).
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BIOCAGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Connects to `engine` (by name) whatever the variable says.
pub async fn connect(engine: &str) -> biocage_core::Result<Box<dyn SandboxRuntime>> {
    init_logs();
    crate::matrix::connect(engine).await
}

/// Why `engine` is not under test, or `None` when it is (BIOCAGE_TEST_ENGINES lists it).
pub fn not_selected(engine: &str) -> Option<String> {
    match std::env::var(ENGINES_VAR) {
        Ok(v) if v.split(',').any(|e| e.trim() == engine) => None,
        Ok(v) => Some(format!("{engine} is not listed in {ENGINES_VAR}={v}")),
        Err(_) => Some(format!(
            "engine tests do not run; set {ENGINES_VAR}=docker,podman (scripts/test.sh does)"
        )),
    }
}

static SKIPS: std::sync::Mutex<Vec<(String, String, String)>> = std::sync::Mutex::new(Vec::new());

/// Says that `case` does not apply to `engine` (a capability it lacks): the runner
/// reports the case as ignored with `reason`, never as passed. The case returns then.
pub fn skip(engine: &str, case: &str, reason: &str) {
    note_capability(engine, case, reason);
    SKIPS.lock().unwrap_or_else(|e| e.into_inner()).push((
        engine.to_string(),
        case.to_string(),
        reason.to_string(),
    ));
}

/// The reason `case` was skipped on `engine`, if it was.
pub fn skipped(engine: &str, case: &str) -> Option<String> {
    SKIPS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(e, c, _)| e == engine && c == case)
        .map(|(_, _, r)| r.clone())
}

/// The runtime for `engine` if it is under test; `None` (after one loud line) if not.
/// Panics when the engine is required but unreachable.
pub async fn runtime(engine: &str) -> Option<Box<dyn SandboxRuntime>> {
    let wanted = match std::env::var(ENGINES_VAR) {
        Ok(v) => v,
        Err(_) => {
            skip_loudly(&format!(
                "SKIPPED: engine tests do not run; set {ENGINES_VAR}=docker,podman (scripts/test.sh does)"
            ));
            return None;
        }
    };
    if !wanted.split(',').any(|e| e.trim() == engine) {
        skip_loudly(&format!(
            "SKIPPED: {engine} tests do not run; it is not listed in {ENGINES_VAR}={wanted}"
        ));
        return None;
    }
    match connect(engine).await {
        Ok(rt) => Some(rt),
        Err(e) => panic!("{engine} is required by {ENGINES_VAR} but unusable: {e}"),
    }
}

/// The config the suite uses on `rt`: the defaults, plus permission to start where the
/// engine cannot hold a cpu limit (that difference is asserted by its own case).
pub async fn config(rt: &dyn SandboxRuntime) -> SandboxConfig {
    config_builder(rt).await.build().expect("valid config")
}

/// A builder primed like [`config`].
pub async fn config_builder(rt: &dyn SandboxRuntime) -> biocage_core::SandboxConfigBuilder {
    // Where the default configuration is refused for a limit the configuration cannot
    // hold (rootless cgroup v1, gVisor's cpu), the suite starts anyway.
    let refused = matches!(
        rt.limit_plan(&SandboxConfig::default()).await,
        Err(biocage_core::Error::UnenforceableLimit { .. })
    );
    SandboxConfig::builder().allow_unenforced_limits(refused)
}

/// The engine's capabilities.
pub async fn caps(rt: &dyn SandboxRuntime) -> Capabilities {
    rt.capabilities().await.expect("capabilities")
}

/// A session with the suite's config.
pub async fn session(rt: &dyn SandboxRuntime) -> Box<dyn Session> {
    let config = config(rt).await;
    rt.create_session(&config).await.expect("create session")
}

/// Runs `code` and returns the result, failing the test on a sandbox error.
pub async fn run(s: &dyn Session, code: &str) -> ExecutionResult {
    s.run(code)
        .await
        .unwrap_or_else(|e| panic!("run failed: {e}\ncode:\n{code}"))
}

/// Runs `code` with a time limit.
pub async fn run_for(s: &dyn Session, code: &str, secs: f64) -> ExecutionResult {
    s.run_with_timeout(code, Duration::from_secs_f64(secs))
        .await
        .unwrap_or_else(|e| panic!("run failed: {e}\ncode:\n{code}"))
}

/// Asserts success and returns stdout.
pub fn ok(r: &ExecutionResult) -> &str {
    assert!(r.success, "expected success, got {}", r.to_json());
    assert_eq!(r.exit_code, 0, "{}", r.to_json());
    assert!(r.error.is_none());
    &r.stdout
}

/// Records a capability-gated difference: printed by scripts/test.sh at the end of the
/// run (file in `BIOCAGE_REPORT`), and on stderr.
pub fn note_capability(engine: &str, case: &str, what: &str) {
    let line = format!("{engine}: {case}: {what}");
    eprintln!("CAPABILITY {line}");
    if let Ok(path) = std::env::var("BIOCAGE_REPORT") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}
