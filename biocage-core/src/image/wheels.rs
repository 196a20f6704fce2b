//! Wheels fetched on the host for an image's Python and platform, for builds whose
//! containers cannot reach a package index.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

use super::probe::PythonTarget;
use super::{BuildEvent, Progress};
use crate::error::{Error, Result};

/// Where the host's wheels come from.
#[derive(Debug, Clone)]
pub(crate) enum WheelSource {
    /// Only these folders, no index (`--wheels DIR`): nothing is fetched.
    Folders(Vec<PathBuf>),
    /// The host's wheel cache first, then the package index (fetched wheels are kept in
    /// the cache); `fresh` skips the cache-only attempt.
    Index {
        /// The cache folder.
        cache: PathBuf,
        /// Resolve against the index even when the cache could do.
        fresh: bool,
    },
}

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

/// The host interpreter that runs pip: `BIOCAGE_HOST_PYTHON`, else `python3`.
fn host_python() -> String {
    std::env::var("BIOCAGE_HOST_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// What one pip run printed, and whether it succeeded.
struct PipRun {
    ok: bool,
    lines: Vec<String>,
}

impl PipRun {
    /// pip's own `ERROR:` lines, or its last lines when it printed none.
    fn error_text(&self) -> String {
        let errors: Vec<&str> = self
            .lines
            .iter()
            .map(String::as_str)
            .filter(|l| l.starts_with("ERROR:"))
            .collect();
        if errors.is_empty() {
            let n = self.lines.len();
            self.lines[n.saturating_sub(3)..].join(" / ")
        } else {
            errors.join(" ")
        }
    }
}

/// Runs the host's pip with `args`, showing its lines when `show` is set.
async fn pip(args: &[String], show: bool, progress: &mut Progress<'_>) -> Result<PipRun> {
    let python = host_python();
    let mut child = tokio::process::Command::new(&python)
        .args(["-m", "pip"])
        .args(args)
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("PIP_NO_INPUT", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::BuildFailed {
            image: String::new(),
            reason: format!(
                "offline builds download wheels with the host's pip, and `{python} -m pip` could not start ({e}); install python3 and pip (Debian: apt-get install python3-pip) or set BIOCAGE_HOST_PYTHON"
            ),
        })?;
    let mut out = child.stdout.take().map(|s| BufReader::new(s).lines());
    let mut err = child.stderr.take().map(|s| BufReader::new(s).lines());
    let mut lines = Vec::new();
    while out.is_some() || err.is_some() {
        let line = tokio::select! {
            l = async { out.as_mut()?.next_line().await.ok().flatten() }, if out.is_some() => {
                if l.is_none() { out = None; }
                l
            }
            l = async { err.as_mut()?.next_line().await.ok().flatten() }, if err.is_some() => {
                if l.is_none() { err = None; }
                l
            }
        };
        if let Some(line) = line {
            let line = line.trim_end().to_string();
            if line.is_empty() {
                continue;
            }
            if show {
                progress(BuildEvent::Line(&line));
            }
            lines.push(line);
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| Error::io(format!("waiting for {python} -m pip"), e))?;
    Ok(PipRun {
        ok: status.success(),
        lines,
    })
}

/// Files of `dir` whose names end in `.whl`.
fn wheels_in(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "whl") && p.is_file())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Fetches into `stage` every wheel that `requirement_args` (pip arguments such as
/// `-r FILE` or package names) needs on `target`, resolved on the host from `source`.
/// Returns the wheels now in `stage`.
pub(crate) async fn download(
    requirement_args: &[String],
    target: &PythonTarget,
    source: &WheelSource,
    stage: &Path,
    progress: &mut Progress<'_>,
) -> Result<Vec<PathBuf>> {
    let mut base: Vec<String> = vec![
        "download".into(),
        "--progress-bar".into(),
        "off".into(),
        "-d".into(),
        stage.display().to_string(),
    ];
    base.extend(target.pip_target_args());
    let what = format!("wheels for {}", target.describe());
    let run = match source {
        WheelSource::Folders(dirs) => {
            let mut args = base.clone();
            args.extend(["--isolated".into(), "--no-index".into()]);
            for d in dirs {
                args.push("--find-links".into());
                args.push(d.display().to_string());
            }
            args.extend(requirement_args.iter().cloned());
            progress(BuildEvent::Phase(&format!(
                "resolving {what} from {}",
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
            let run = pip(&args, true, progress).await?;
            if !run.ok {
                return Err(Error::BuildFailed {
                    image: String::new(),
                    reason: format!(
                        "pip on the host found no {what} in the given folders: {}; put the missing wheels there, or leave out --wheels to fetch them from the package index",
                        run.error_text(),
                    ),
                });
            }
            run
        }
        WheelSource::Index { cache, fresh } => {
            std::fs::create_dir_all(cache).map_err(|e| {
                Error::io(format!("creating the wheel cache {}", cache.display()), e)
            })?;
            let mut from_cache = None;
            if !fresh {
                let mut args = base.clone();
                args.extend(["--no-index".into(), "--find-links".into()]);
                args.push(cache.display().to_string());
                args.extend(requirement_args.iter().cloned());
                progress(BuildEvent::Phase(&format!(
                    "resolving {what} from the host's wheel cache"
                )));
                let run = pip(&args, false, progress).await?;
                if run.ok {
                    from_cache = Some(run);
                }
            }
            match from_cache {
                Some(run) => run,
                None => {
                    // Not all in the cache: fetch from the index, then keep them.
                    for w in wheels_in(stage) {
                        let _ = std::fs::remove_file(w);
                    }
                    let mut args = base.clone();
                    args.push("--find-links".into());
                    args.push(cache.display().to_string());
                    args.extend(requirement_args.iter().cloned());
                    progress(BuildEvent::Phase(&format!(
                        "downloading {what} on the host"
                    )));
                    let run = pip(&args, true, progress).await?;
                    if !run.ok {
                        return Err(Error::BuildFailed {
                            image: String::new(),
                            reason: format!(
                                "pip on the host could not get {what}: {}",
                                run.error_text()
                            ),
                        });
                    }
                    for w in wheels_in(stage) {
                        if let Some(name) = w.file_name() {
                            let kept = cache.join(name);
                            if !kept.exists() {
                                if let Err(e) = std::fs::copy(&w, &kept) {
                                    tracing::warn!(
                                        "could not keep {} in the wheel cache: {e}",
                                        w.display()
                                    );
                                }
                            }
                        }
                    }
                    run
                }
            }
        }
    };
    drop(run);
    Ok(wheels_in(stage))
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
        .flat_map(|d| wheels_in(d))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("pip-") && n.ends_with("-py3-none-any.whl"))
        })
        .max_by_key(version)
}
