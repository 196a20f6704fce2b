//! `biocage.SandboxConfig` and `biocage.Exposure`: the core's `SandboxConfig` from
//! Python keywords, checked when it is made.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use biocage_core::config::timeout_from_secs;
use biocage_core::size::{format_size, parse_size};
use biocage_core::{Error, Exposure, ExposureMode, SandboxConfig};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::engine::host_cpus;
use crate::errors::Failure;

fn invalid(py: Python<'_>, field: &'static str, value: String, reason: &str) -> PyErr {
    Failure::Core(Error::InvalidConfig {
        field,
        value,
        reason: reason.to_string(),
    })
    .into_pyerr(py)
}

/// A size given as bytes (int) or as text ("512m", "2g").
fn size(py: Python<'_>, field: &'static str, value: &Bound<'_, PyAny>) -> PyResult<u64> {
    if let Ok(text) = value.extract::<String>() {
        return parse_size(field, &text).map_err(|e| Failure::Core(e).into_pyerr(py));
    }
    if let Ok(n) = value.extract::<u64>() {
        return Ok(n);
    }
    Err(invalid(
        py,
        field,
        value.repr().map(|r| r.to_string()).unwrap_or_default(),
        "give bytes as an int, or text such as \"512m\" or \"2g\"",
    ))
}

fn seconds(py: Python<'_>, field: &'static str, value: f64) -> PyResult<Duration> {
    timeout_from_secs(value).map_err(|_| {
        invalid(
            py,
            field,
            value.to_string(),
            "must be a number of seconds above 0 and at most 86400 (24 hours)",
        )
    })
}

/// Makes a host path absolute (relative to the current folder), as the CLI does.
fn absolute(host: PathBuf) -> PathBuf {
    if host.is_absolute() {
        return host;
    }
    std::env::current_dir().map_or(host.clone(), |d| d.join(host))
}

/// A host file or folder made visible in the sandbox.
///
/// ``Exposure(host, container, read_only=True)``: ``host`` is a path on this machine
/// (made absolute), ``container`` an absolute path in the sandbox. Read-only exposures
/// may be files or folders (writes fail with EROFS); read-write ones must be folders:
/// in the sandbox they are a private copy whose changes are copied back to ``host``
/// after every run and at close.
#[pyclass(module = "biocage", name = "Exposure", frozen, eq)]
#[derive(Debug, Clone, PartialEq)]
pub struct PyExposure {
    /// The core's exposure.
    pub inner: Exposure,
}

#[pymethods]
impl PyExposure {
    #[new]
    #[pyo3(signature = (host, container, read_only = true))]
    fn new(host: PathBuf, container: String, read_only: bool) -> Self {
        PyExposure {
            inner: Exposure {
                host: absolute(host),
                container,
                mode: if read_only {
                    ExposureMode::ReadOnly
                } else {
                    ExposureMode::ReadWrite
                },
            },
        }
    }

    /// The path on the host.
    #[getter]
    fn host(&self) -> String {
        self.inner.host.display().to_string()
    }

    /// The path in the sandbox.
    #[getter]
    fn container(&self) -> &str {
        &self.inner.container
    }

    /// True when sandbox code cannot write it.
    #[getter]
    fn read_only(&self) -> bool {
        self.inner.mode == ExposureMode::ReadOnly
    }

    /// "read_only" or "read_write".
    #[getter]
    fn mode(&self) -> &'static str {
        match self.inner.mode {
            ExposureMode::ReadOnly => "read_only",
            ExposureMode::ReadWrite => "read_write",
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "Exposure({:?}, {:?}, read_only={})",
            self.host(),
            self.inner.container,
            if self.read_only() { "True" } else { "False" }
        )
    }
}

impl PyExposure {
    /// An exposure from an `Exposure`, or a tuple `(host, container)` or
    /// `(host, container, read_only)`.
    fn extract_any(py: Python<'_>, item: &Bound<'_, PyAny>) -> PyResult<Exposure> {
        if let Ok(e) = item.cast::<PyExposure>() {
            return Ok(e.get().inner.clone());
        }
        if let Ok(t) = item.cast::<PyTuple>() {
            let read_only = match t.len() {
                2 => true,
                3 => t.get_item(2)?.extract::<bool>()?,
                _ => {
                    return Err(invalid(
                        py,
                        "exposure",
                        item.repr()?.to_string(),
                        "give Exposure(host, container, read_only=True) or a tuple (host, container[, read_only])",
                    ))
                }
            };
            let host: PathBuf = t.get_item(0)?.extract()?;
            let container: String = t.get_item(1)?.extract()?;
            return Ok(PyExposure::new(host, container, read_only).inner);
        }
        Err(PyTypeError::new_err(format!(
            "exposures must be Exposure objects or (host, container[, read_only]) tuples, not {}",
            item.get_type().name()?
        )))
    }
}

/// How a sandbox is made: every limit and setting, checked when it is made.
///
/// All arguments are keywords; the defaults are the hardened ones:
///
/// - ``image``: an image with python3 (3.8+); default ``"biocage:latest"``.
/// - ``memory``: memory limit, bytes or text (``"512m"``, ``"2g"``); no swap on top.
/// - ``cpus``: cpu limit in cores (fractions allowed). A limit above this host's core
///   count is held at the core count (it is then trivially met), not refused.
/// - ``pids``: most processes and threads at once (256).
/// - ``timeout``: time limit of one run in seconds (30); each run may set its own.
/// - ``network``: network access (off).
/// - ``exposures``: host paths to show in the sandbox: ``Exposure`` objects or
///   ``(host, container[, read_only])`` tuples.
/// - ``env``: environment variables for the sandbox's code.
/// - ``allow_unenforced_limits``: start even where the engine cannot hold a limit
///   (rootless Podman on cgroup v1 cannot hold memory or cpu limits); such limits are
///   then reported as unenforced by ``info()``. Off: such a sandbox refuses to start
///   with ``UnenforceableLimitError``.
/// - ``capture_figures``: return matplotlib figures left open as PNG ``images`` (on).
/// - ``interrupt_grace``: seconds a run may ignore the interrupt sent at its time limit
///   before its interpreter is killed and replaced (2).
/// - ``output_cap``: most bytes kept of stdout and of stderr per run (1 MiB).
/// - ``workspace_size``, ``tmp_size``, ``shm_size``: sizes of the writable
///   ``/workspace``, ``/tmp`` and ``/dev/shm`` (256m, 128m, 64m).
/// - ``max_transfer``: largest file moved by ``read_file``/``write_file`` (64m).
/// - ``max_code_size``: largest code of one run (16m).
/// - ``rw_exposure_size``, ``rw_exposure_files``: capacity of each read-write exposure
///   (256m, 10000 files).
/// - ``user``: ``uid:gid`` that runs the code (never root).
///
/// A bad value raises ``InvalidConfigError`` (a ``ValueError``) naming the setting.
#[pyclass(module = "biocage", name = "SandboxConfig", frozen)]
#[derive(Debug, Clone)]
pub struct PyConfig {
    /// The checked core configuration.
    pub inner: SandboxConfig,
    requested_cpus: f64,
}

#[pymethods]
impl PyConfig {
    #[new]
    #[pyo3(
        signature = (
            *,
            image = None,
            memory = None,
            cpus = None,
            pids = None,
            timeout = None,
            network = None,
            exposures = None,
            env = None,
            allow_unenforced_limits = None,
            capture_figures = None,
            interrupt_grace = None,
            output_cap = None,
            workspace_size = None,
            tmp_size = None,
            shm_size = None,
            max_transfer = None,
            max_code_size = None,
            rw_exposure_size = None,
            rw_exposure_files = None,
            user = None,
        ),
        text_signature = "(*, image='biocage:latest', memory='512m', cpus=1.0, pids=256, timeout=30.0, network=False, exposures=(), env=None, allow_unenforced_limits=False, capture_figures=True, interrupt_grace=2.0, output_cap=1048576, workspace_size='256m', tmp_size='128m', shm_size='64m', max_transfer='64m', max_code_size='16m', rw_exposure_size='256m', rw_exposure_files=10000, user='1000:1000')"
    )]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        image: Option<String>,
        memory: Option<Bound<'_, PyAny>>,
        cpus: Option<f64>,
        pids: Option<u32>,
        timeout: Option<f64>,
        network: Option<bool>,
        exposures: Option<Bound<'_, PyAny>>,
        env: Option<Bound<'_, PyDict>>,
        allow_unenforced_limits: Option<bool>,
        capture_figures: Option<bool>,
        interrupt_grace: Option<f64>,
        output_cap: Option<Bound<'_, PyAny>>,
        workspace_size: Option<Bound<'_, PyAny>>,
        tmp_size: Option<Bound<'_, PyAny>>,
        shm_size: Option<Bound<'_, PyAny>>,
        max_transfer: Option<Bound<'_, PyAny>>,
        max_code_size: Option<Bound<'_, PyAny>>,
        rw_exposure_size: Option<Bound<'_, PyAny>>,
        rw_exposure_files: Option<u32>,
        user: Option<String>,
    ) -> PyResult<Self> {
        let mut c = SandboxConfig::default();
        if let Some(v) = image {
            c.image = v;
        }
        if let Some(v) = memory {
            c.memory_bytes = size(py, "memory", &v)?;
        }
        let requested_cpus = cpus.unwrap_or(c.cpus);
        c.cpus = requested_cpus;
        if let Some(v) = pids {
            c.pids_limit = v;
        }
        if let Some(v) = timeout {
            c.timeout = seconds(py, "timeout", v)?;
        }
        if let Some(v) = network {
            c.network = v;
        }
        if let Some(list) = exposures {
            for item in list.try_iter()? {
                c.exposures.push(PyExposure::extract_any(py, &item?)?);
            }
        }
        if let Some(d) = env {
            let mut map = BTreeMap::new();
            for (k, v) in d.iter() {
                map.insert(k.extract::<String>()?, v.extract::<String>()?);
            }
            c.env = map;
        }
        if let Some(v) = allow_unenforced_limits {
            c.allow_unenforced_limits = v;
        }
        if let Some(v) = capture_figures {
            c.capture_figures = v;
        }
        if let Some(v) = interrupt_grace {
            c.interrupt_grace = seconds(py, "interrupt grace", v)?;
        }
        if let Some(v) = output_cap {
            c.output_cap = usize::try_from(size(py, "output cap", &v)?).unwrap_or(usize::MAX);
        }
        if let Some(v) = workspace_size {
            c.workspace_bytes = size(py, "workspace size", &v)?;
        }
        if let Some(v) = tmp_size {
            c.tmp_bytes = size(py, "tmp size", &v)?;
        }
        if let Some(v) = shm_size {
            c.shm_bytes = size(py, "shm size", &v)?;
        }
        if let Some(v) = max_transfer {
            c.max_transfer_bytes = size(py, "max transfer", &v)?;
        }
        if let Some(v) = max_code_size {
            c.max_code_bytes = usize::try_from(size(py, "max code", &v)?).unwrap_or(usize::MAX);
        }
        if let Some(v) = rw_exposure_size {
            c.rw_exposure_bytes = size(py, "read-write exposure size", &v)?;
        }
        if let Some(v) = rw_exposure_files {
            c.rw_exposure_files = v;
        }
        if let Some(v) = user {
            c.user = v;
        }
        c.validate().map_err(|e| Failure::Core(e).into_pyerr(py))?;
        // Checked as asked; held at what this host has (an engine refuses more).
        c.cpus = c.cpus.min(host_cpus());
        Ok(PyConfig {
            inner: c,
            requested_cpus,
        })
    }

    /// The image.
    #[getter]
    fn image(&self) -> &str {
        &self.inner.image
    }
    /// Memory limit in bytes.
    #[getter]
    fn memory(&self) -> u64 {
        self.inner.memory_bytes
    }
    /// CPU limit in cores, as applied (at most this host's core count).
    #[getter]
    fn cpus(&self) -> f64 {
        self.inner.cpus
    }
    /// CPU limit in cores, as asked for.
    #[getter]
    fn requested_cpus(&self) -> f64 {
        self.requested_cpus
    }
    /// Most processes and threads at once.
    #[getter]
    fn pids(&self) -> u32 {
        self.inner.pids_limit
    }
    /// Default time limit of one run, in seconds.
    #[getter]
    fn timeout(&self) -> f64 {
        self.inner.timeout.as_secs_f64()
    }
    /// Network access.
    #[getter]
    fn network(&self) -> bool {
        self.inner.network
    }
    /// Host paths shown in the sandbox.
    #[getter]
    fn exposures(&self) -> Vec<PyExposure> {
        self.inner
            .exposures
            .iter()
            .map(|e| PyExposure { inner: e.clone() })
            .collect()
    }
    /// Environment variables for the sandbox's code.
    #[getter]
    fn env(&self) -> BTreeMap<String, String> {
        self.inner.env.clone()
    }
    /// Start even where a limit cannot be enforced.
    #[getter]
    fn allow_unenforced_limits(&self) -> bool {
        self.inner.allow_unenforced_limits
    }
    /// Figures are returned as PNG images.
    #[getter]
    fn capture_figures(&self) -> bool {
        self.inner.capture_figures
    }
    /// Seconds between the interrupt at a time limit and the kill.
    #[getter]
    fn interrupt_grace(&self) -> f64 {
        self.inner.interrupt_grace.as_secs_f64()
    }
    /// Most bytes kept of each output stream per run.
    #[getter]
    fn output_cap(&self) -> usize {
        self.inner.output_cap
    }
    /// Size of /workspace in bytes.
    #[getter]
    fn workspace_size(&self) -> u64 {
        self.inner.workspace_bytes
    }
    /// Size of /tmp in bytes.
    #[getter]
    fn tmp_size(&self) -> u64 {
        self.inner.tmp_bytes
    }
    /// Size of /dev/shm in bytes.
    #[getter]
    fn shm_size(&self) -> u64 {
        self.inner.shm_bytes
    }
    /// Largest file moved by read_file / write_file, in bytes.
    #[getter]
    fn max_transfer(&self) -> u64 {
        self.inner.max_transfer_bytes
    }
    /// Largest code of one run, in bytes.
    #[getter]
    fn max_code_size(&self) -> usize {
        self.inner.max_code_bytes
    }
    /// Size of each read-write exposure in the sandbox, in bytes.
    #[getter]
    fn rw_exposure_size(&self) -> u64 {
        self.inner.rw_exposure_bytes
    }
    /// Most files in each read-write exposure.
    #[getter]
    fn rw_exposure_files(&self) -> u32 {
        self.inner.rw_exposure_files
    }
    /// uid:gid that runs the sandbox's code.
    #[getter]
    fn user(&self) -> &str {
        &self.inner.user
    }

    /// The configuration as JSON (the core's serialization).
    fn to_json(&self) -> String {
        serde_json::to_string(&self.inner).unwrap_or_default()
    }

    fn __repr__(&self) -> String {
        let mut s = format!(
            "SandboxConfig(image={:?}, memory={:?}, cpus={}, pids={}, timeout={}, network={}",
            self.inner.image,
            format_size(self.inner.memory_bytes),
            self.inner.cpus,
            self.inner.pids_limit,
            self.inner.timeout.as_secs_f64(),
            if self.inner.network { "True" } else { "False" },
        );
        if !self.inner.exposures.is_empty() {
            let list: Vec<String> = self.exposures().iter().map(PyExposure::__repr__).collect();
            s.push_str(&format!(", exposures=[{}]", list.join(", ")));
        }
        if self.inner.allow_unenforced_limits {
            s.push_str(", allow_unenforced_limits=True");
        }
        s.push(')');
        s
    }
}
