//! Asking an image about its Python: version, platform, installed distributions. The
//! question runs in a sandbox session on the image, so it is also proof that the image
//! hosts sessions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::SandboxConfig;
use crate::error::{Error, Result};
use crate::runtime::SandboxRuntime;

/// Python code that prints one JSON line describing the interpreter (stdlib only,
/// Python 3.8+).
const PROBE: &str = r#"
import json, os, platform, re, sys
try:
    import importlib.metadata as _md
    _dists = {}
    for _d in _md.distributions():
        _n = _d.metadata["Name"]
        if _n:
            _dists.setdefault(re.sub(r"[-_.]+", "-", _n).lower(), _d.version)
except Exception:
    _dists = {}
try:
    _libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
except (ValueError, OSError, AttributeError):
    _libc = ""
import importlib.util as _u
print(json.dumps({
    "version": platform.python_version(),
    "implementation": sys.implementation.name,
    "machine": platform.machine(),
    "glibc": _libc.split()[-1] if _libc.startswith("glibc") else None,
    "musl": any(n.startswith("ld-musl") for n in (os.listdir("/lib") if os.path.isdir("/lib") else [])),
    "pip": _u.find_spec("pip") is not None,
    "packages": _dists,
}))
"#;

/// What an image's `python3` says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PythonTarget {
    /// Full version, e.g. "3.11.2".
    pub version: String,
    /// `sys.implementation.name`, e.g. "cpython".
    pub implementation: String,
    /// `platform.machine()`, e.g. "x86_64".
    pub machine: String,
    /// glibc version ("2.36"), when the C library is glibc.
    pub glibc: Option<String>,
    /// Whether the C library is musl (Alpine).
    #[serde(default)]
    pub musl: bool,
    /// Whether `import pip` works.
    #[serde(default)]
    pub pip: bool,
    /// Installed distributions: normalized name → version.
    #[serde(default)]
    pub packages: BTreeMap<String, String>,
}

impl PythonTarget {
    /// Runs the probe in a fresh session on `image` (network off; limits this engine
    /// cannot hold are allowed, as this is BioCage's own short question).
    pub async fn of_image(rt: &dyn SandboxRuntime, image: &str) -> Result<Self> {
        let config = SandboxConfig::builder()
            .image(image)
            .allow_unenforced_limits(true)
            .build()?;
        let result = rt.run_once(&config, PROBE).await?;
        let failed = |why: String| Error::BuildFailed {
            image: image.to_string(),
            reason: format!("asking its python3 about itself failed: {why}"),
        };
        if !result.success {
            let why = result
                .error
                .map(|e| format!("{}: {}", e.name.unwrap_or_default(), e.message))
                .unwrap_or_else(|| result.stderr.clone());
            return Err(failed(why));
        }
        let line = result.stdout.lines().last().unwrap_or("");
        serde_json::from_str(line).map_err(|e| failed(format!("{e} in {line:?}")))
    }

    /// "3.11" from "3.11.2".
    pub fn minor_version(&self) -> String {
        self.version
            .split('.')
            .take(2)
            .collect::<Vec<_>>()
            .join(".")
    }

    /// The platform tags wheels for this interpreter may carry, newest first: every
    /// manylinux (or musllinux) level its C library meets, and `any`.
    pub fn platforms(&self) -> Vec<String> {
        let arch = &self.machine;
        let mut out = Vec::new();
        if let Some(minor) = self
            .glibc
            .as_deref()
            .and_then(|v| v.strip_prefix("2."))
            .and_then(|m| m.split('.').next())
            .and_then(|m| m.parse::<u32>().ok())
        {
            for m in (17..=minor).rev() {
                out.push(format!("manylinux_2_{m}_{arch}"));
            }
            for (legacy, needs) in [
                ("manylinux2014", 17),
                ("manylinux2010", 12),
                ("manylinux1", 5),
            ] {
                if minor >= needs {
                    out.push(format!("{legacy}_{arch}"));
                }
            }
        } else if self.musl {
            for m in (0..=2).rev() {
                out.push(format!("musllinux_1_{m}_{arch}"));
            }
        } else {
            // Unknown C library: the oldest common baseline.
            out.push(format!("manylinux2014_{arch}"));
        }
        out.push("any".to_string());
        out
    }

    /// The arguments that make a host's `pip download` pick wheels for this
    /// interpreter and platform rather than the host's own.
    pub fn pip_target_args(&self) -> Vec<String> {
        let mut args = vec![
            "--only-binary=:all:".to_string(),
            "--python-version".to_string(),
            self.minor_version(),
        ];
        let implementation = match self.implementation.as_str() {
            "cpython" => Some("cp"),
            "pypy" => Some("pp"),
            _ => None,
        };
        if let Some(i) = implementation {
            args.push("--implementation".to_string());
            args.push(i.to_string());
        }
        for p in self.platforms() {
            args.push("--platform".to_string());
            args.push(p);
        }
        args
    }

    /// One line for messages: "Python 3.11.2 (cpython, manylinux_2_36_x86_64)".
    pub fn describe(&self) -> String {
        let platform = self
            .platforms()
            .into_iter()
            .next()
            .unwrap_or_else(|| self.machine.clone());
        format!(
            "Python {} ({}, {platform})",
            self.version, self.implementation
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(glibc: Option<&str>, musl: bool) -> PythonTarget {
        PythonTarget {
            version: "3.11.2".into(),
            implementation: "cpython".into(),
            machine: "x86_64".into(),
            glibc: glibc.map(str::to_string),
            musl,
            pip: false,
            packages: BTreeMap::new(),
        }
    }

    #[test]
    fn platforms_follow_the_c_library() {
        let p = target(Some("2.36"), false).platforms();
        assert_eq!(p.first().map(String::as_str), Some("manylinux_2_36_x86_64"));
        assert!(p.contains(&"manylinux_2_17_x86_64".to_string()));
        assert!(p.contains(&"manylinux2014_x86_64".to_string()));
        assert!(p.contains(&"manylinux1_x86_64".to_string()));
        assert_eq!(p.last().map(String::as_str), Some("any"));
        let m = target(None, true).platforms();
        assert_eq!(m[0], "musllinux_1_2_x86_64");
        let args = target(Some("2.36"), false).pip_target_args();
        assert!(args
            .windows(2)
            .any(|w| w[0] == "--python-version" && w[1] == "3.11"));
        assert!(args
            .windows(2)
            .any(|w| w[0] == "--implementation" && w[1] == "cp"));
    }
}
