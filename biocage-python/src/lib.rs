//! `biocage._native`: the Rust half of the `biocage` Python package.
//!
//! The Python package (`python/biocage`) holds the public classes (`Sandbox`,
//! `AsyncSandbox`, `BioCageManager`, the result types and exceptions); this module gives
//! them sessions on the Rust engine: one tokio runtime per process, engine connections
//! kept for the process, sync calls that release the GIL while they wait and turn Ctrl-C
//! into an interrupt of the sandbox's run, and asyncio futures resolved on the event
//! loop's own thread.

mod config;
mod engine;
mod errors;
mod session;

use pyo3::prelude::*;

use crate::engine::{connect, runtime, Choice};
use crate::errors::{py_result, Failure};

/// Runs `fut` on the runtime and waits for it without the GIL (Ctrl-C raises at once;
/// the task goes on).
fn block<T, F>(py: Python<'_>, fut: F) -> PyResult<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, Failure>> + Send + 'static,
{
    let rt = py_result(py, runtime())?;
    let mut handle = rt.spawn(fut);
    py_result(py, session::wait_for(py, rt, &mut handle)?)
}

fn choice(py: Python<'_>, runtime_name: &str) -> PyResult<Choice> {
    py_result(py, Choice::parse(runtime_name))
}

/// The engine `runtime` resolves to: "docker" or "podman" (connecting if needed).
#[pyfunction]
fn engine_name(py: Python<'_>, runtime_name: &str) -> PyResult<String> {
    let c = choice(py, runtime_name)?;
    block(py, async move { Ok(connect(c).await?.name().to_string()) })
}

/// What the engine can enforce, as JSON (the core's `Capabilities`).
#[pyfunction]
fn capabilities(py: Python<'_>, runtime_name: &str) -> PyResult<String> {
    let c = choice(py, runtime_name)?;
    block(py, async move {
        let caps = connect(c).await?.capabilities().await?;
        serde_json::to_string(&caps).map_err(|e| Failure::Internal(e.to_string()))
    })
}

/// Whether `image` is present in the engine.
#[pyfunction]
fn image_exists(py: Python<'_>, runtime_name: &str, image: String) -> PyResult<bool> {
    let c = choice(py, runtime_name)?;
    block(py, async move {
        Ok(connect(c).await?.image_exists(&image).await?)
    })
}

/// Checks that the engine answers and has `image`; raises the engine's own
/// `ImageMissingError` (which says how to build it) when it does not.
#[pyfunction]
fn check_image(py: Python<'_>, runtime_name: &str, image: String) -> PyResult<()> {
    let c = choice(py, runtime_name)?;
    block(py, async move {
        let engine = connect(c).await?;
        if engine.image_exists(&image).await? {
            return Ok(());
        }
        // The engine's own error, which names the command that builds the image: a
        // session start refuses a missing image before it makes anything.
        let mut config = biocage_core::SandboxConfig::default();
        config.image = image;
        config.allow_unenforced_limits = true;
        let session = engine.create_session(&config).await?;
        // The image appeared meanwhile.
        session.close().await?;
        Ok(())
    })
}

/// The sandboxes BioCage made in the engine, as JSON (live or not).
#[pyfunction]
fn list_sandboxes(py: Python<'_>, runtime_name: &str) -> PyResult<String> {
    let c = choice(py, runtime_name)?;
    block(py, async move {
        let list = connect(c).await?.list_sandboxes().await?;
        serde_json::to_string(&list).map_err(|e| Failure::Internal(e.to_string()))
    })
}

/// How many cpus a sandbox can be given here (larger limits are held at this).
#[pyfunction]
fn host_cpus() -> f64 {
    engine::host_cpus()
}

/// Logs of the engine crates on stderr, filtered by `BIOCAGE_LOG` (default: warnings).
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BIOCAGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The Rust engine of the `biocage` package (use the classes of `biocage`).
#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    init_logs();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<config::PyConfig>()?;
    m.add_class::<config::PyExposure>()?;
    m.add_class::<session::SessionCore>()?;
    m.add_function(wrap_pyfunction!(session::start, m)?)?;
    m.add_function(wrap_pyfunction!(session::start_async, m)?)?;
    m.add_function(wrap_pyfunction!(session::close_all, m)?)?;
    m.add_function(wrap_pyfunction!(engine_name, m)?)?;
    m.add_function(wrap_pyfunction!(capabilities, m)?)?;
    m.add_function(wrap_pyfunction!(image_exists, m)?)?;
    m.add_function(wrap_pyfunction!(check_image, m)?)?;
    m.add_function(wrap_pyfunction!(list_sandboxes, m)?)?;
    m.add_function(wrap_pyfunction!(host_cpus, m)?)?;
    Ok(())
}
