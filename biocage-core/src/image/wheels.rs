//! Wheels for an image's Python and platform, for builds whose containers cannot reach
//! a package index. pip never runs on the host (a requirement could make it run a
//! package's build code there): it runs in a throwaway sandbox.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::probe::PythonTarget;
use super::{BuildEvent, Progress};
use crate::config::SandboxConfig;
use crate::error::{Error, Result};
use crate::runtime::SandboxRuntime;

/// The host's wheel cache: `BIOCAGE_WHEEL_CACHE`, else `$XDG_CACHE_HOME/biocage/wheels`,
/// else `~/.cache/biocage/wheels`.
pub fn wheel_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BIOCAGE_WHEEL_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("biocage").join("wheels")
}

/// Where the download sandbox writes the wheels (a read-write exposure of the stage).
const OUT: &str = "/biocage/out";
/// Where it sees the host's wheel cache (read-only).
const CACHE: &str = "/biocage/cache";
/// Where it sees the host's CA certificates (read-only).
const CA: &str = "/biocage/ca-certificates.crt";
/// The host's CA bundle, unless SSL_CERT_FILE names another.
const HOST_CA: &str = "/etc/ssl/certs/ca-certificates.crt";
/// How long one download may take.
const DOWNLOAD_TIME: Duration = Duration::from_secs(30 * 60);
/// What the download sandbox may hold in wheels (a tmpfs, counted in its memory).
const DOWNLOAD_BYTES: u64 = 3 << 30;

/// Python run in the download sandbox: pip, as the sandbox's non-root user, with the
/// arguments and requirements given as JSON (no quoting of host text into code).
const DOWNLOAD: &str = r#"
import hashlib, importlib.util, json, os, re, shutil, subprocess, sys, urllib.request
_args = json.loads(ARGS)
with open("/tmp/requirements.txt", "w") as _f:
    _f.write(REQS)
os.environ.update(HOST_ENV)
_env = dict(os.environ, HOME="/tmp", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1",
            PIP_NO_CACHE_DIR="1", PIP_PROGRESS_BAR="off")
_pip = [sys.executable, "-m", "pip"]
if importlib.util.find_spec("pip") is None:
    # No pip in this image: fetch pip's wheel from the index (checked against its hash)
    # and run pip from it; the wheel goes out with the rest.
    _index = _env.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    _req = urllib.request.Request(_index + "/pip/",
                                  headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    _files = json.load(urllib.request.urlopen(_req, timeout=60))["files"]
    def _version(f):
        return [int(x) for x in re.findall(r"\d+", f["filename"].split("-")[1])]
    _wheels = [f for f in _files if re.fullmatch(r"pip-[\d.]+-py3-none-any\.whl", f["filename"])
               and not f.get("yanked")]
    _best = max(_wheels, key=_version)
    _data = urllib.request.urlopen(_best["url"], timeout=300).read()
    if hashlib.sha256(_data).hexdigest() != _best["hashes"]["sha256"]:
        raise SystemExit("the pip wheel from the index does not match its sha256")
    _wheel = os.path.join(OUT, _best["filename"])
    with open(_wheel, "wb") as _f:
        _f.write(_data)
    shutil.copy(_wheel, "/tmp/" + _best["filename"])
    _pip = [sys.executable, "/tmp/" + _best["filename"] + "/pip"]
_r = subprocess.run(_pip + ["download", "-d", OUT] + _args + ["-r", "/tmp/requirements.txt"],
                    env=_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT, text=True)
print(_r.stdout)
if _r.returncode:
    raise SystemExit(_r.returncode)
"#;

/// pip's own `ERROR:` lines of `output`, or its last lines when it printed none.
fn error_text(output: &str) -> String {
    let lines: Vec<&str> = output
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    let errors: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("ERROR:"))
        .collect();
    if errors.is_empty() {
        lines[lines.len().saturating_sub(3)..].join(" / ")
    } else {
        errors.join(" ")
    }
}

/// The `.whl` files of `dir`: regular files only (a link is not followed), sorted.
pub(crate) fn wheels_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "whl"))
        .collect();
    out.sort();
    Ok(out)
}

/// Fetches into `job.stage` every wheel that `job.requirements` (a requirements file's
/// text) needs on `job.target`, from the package index (and the host's wheel cache,
/// unless `job.fresh`). pip never runs on the host: it runs in a throwaway sandbox on `image` as
/// its non-root user, with network, and only wheels come out (`--only-binary=:all:`);
/// new wheels are then kept in the cache. Returns the wheels now in `stage`.
/// One download of wheels in a sandbox (see [`download`]).
pub(crate) struct Download<'a> {
    /// The image the sandbox runs (one with pip, or pip is fetched first).
    pub image: &'a str,
    /// A requirements file's text.
    pub requirements: &'a str,
    /// The interpreter and platform the wheels are for.
    pub target: &'a PythonTarget,
    /// The host's wheel cache.
    pub cache: &'a Path,
    /// Skip the cache.
    pub fresh: bool,
    /// Where the wheels go.
    pub stage: &'a Path,
}

pub(crate) async fn download(
    rt: &dyn SandboxRuntime,
    job: &Download<'_>,
    progress: &mut Progress<'_>,
) -> Result<Vec<PathBuf>> {
    let Download {
        image,
        requirements,
        target,
        cache,
        fresh,
        stage,
    } = *job;
    std::fs::create_dir_all(cache)
        .map_err(|e| Error::io(format!("creating the wheel cache {}", cache.display()), e))?;
    let mut args = target.pip_target_args();
    if !fresh {
        args.extend(["--find-links".to_string(), CACHE.to_string()]);
    }
    let what = format!("wheels for {}", target.describe());
    progress(BuildEvent::Phase(&format!(
        "downloading {what} in a sandbox on {image}"
    )));
    let mut host_env = serde_json::Map::new();
    let mut config = SandboxConfig::builder()
        .image(image)
        .network(true)
        .allow_unenforced_limits(true)
        .timeout(DOWNLOAD_TIME)
        .memory_bytes(DOWNLOAD_BYTES + (1 << 30))
        .rw_exposure_bytes(DOWNLOAD_BYTES)
        .expose_rw(stage, OUT)
        .expose(cache, CACHE);
    // The host's pip index settings, and its CA certificates (an intercepting proxy's
    // CA is often only there), reach pip in the sandbox; nothing else of the host's.
    for var in ["PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST"] {
        if let Ok(v) = std::env::var(var) {
            host_env.insert(var.into(), v.into());
        }
    }
    let ca = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(HOST_CA));
    if ca.is_file() {
        config = config.expose(&ca, CA);
        for var in ["PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"] {
            host_env.insert(var.into(), CA.into());
        }
    }
    let config = config.build()?;
    let code = format!(
        "import json\nARGS = {}\nREQS = {}\nOUT = {}\nHOST_ENV = json.loads({})\n{DOWNLOAD}",
        json_str(&serde_json::to_string(&args).unwrap_or_default()),
        json_str(requirements),
        json_str(OUT),
        json_str(&serde_json::Value::Object(host_env).to_string()),
    );
    let run = rt.run_once(&config, &code).await.map_err(|e| Error::BuildFailed {
        image: String::new(),
        reason: format!(
            "the sandbox that downloads {what} could not run ({e}); it needs network (engines whose sandboxes have none here: rootless Podman without /dev/net/tun, gVisor): give a folder of wheels with --wheels DIR instead"
        ),
    })?;
    for line in run.stdout.lines().filter(|l| !l.trim().is_empty()) {
        progress(BuildEvent::Line(line.trim_end()));
    }
    if !run.success {
        return Err(Error::BuildFailed {
            image: String::new(),
            reason: format!(
                "pip in the download sandbox could not get {what}: {}",
                error_text(&format!("{}\n{}", run.stdout, run.stderr))
            ),
        });
    }
    for w in wheels_in(stage).unwrap_or_default() {
        if let Some(name) = w.file_name() {
            let kept = cache.join(name);
            if !kept.exists() {
                if let Err(e) = std::fs::copy(&w, &kept) {
                    tracing::warn!("could not keep {} in the wheel cache: {e}", w.display());
                }
            }
        }
    }
    Ok(wheels_in(stage).unwrap_or_default())
}

/// `text` as a Python string literal (JSON's string syntax is a subset of Python's).
fn json_str(text: &str) -> String {
    serde_json::Value::String(text.to_string()).to_string()
}

/// A pip wheel in `dirs`, the newest by version, if there is one.
pub(crate) fn find_pip_wheel(dirs: &[PathBuf]) -> Option<PathBuf> {
    let version = |p: &PathBuf| -> Vec<u64> {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split('-').nth(1))
            .map(|v| v.split('.').map(|x| x.parse().unwrap_or(0)).collect())
            .unwrap_or_default()
    };
    dirs.iter()
        .flat_map(|d| wheels_in(d).unwrap_or_default())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("pip-") && n.ends_with("-py3-none-any.whl"))
        })
        .max_by_key(version)
}
