//! The packages a custom image is asked for: a requirements file, or the
//! `[project] dependencies` of a pyproject.toml.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The packages asked for, as pip will read them: one requirement or option per line,
/// comments, blank lines and line continuations resolved, sorted so that the same
/// packages listed in another order (or with other comments) are the same build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirements {
    /// Requirement lines (and global pip options such as `--pre`), sorted.
    pub lines: Vec<String>,
    /// Where they came from (a file path), for messages.
    pub source: String,
}

/// One requested package: its normalized name (PEP 503) and whether an environment
/// marker may leave it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requested {
    /// Normalized project name: lower case, runs of `-_.` as one `-`.
    pub name: String,
    /// The line has an environment marker (`; python_version < "3.9"`): pip may skip it.
    pub conditional: bool,
}

/// Normalizes a project name as PEP 503 does: lower case, runs of `-`, `_`, `.` as `-`.
pub fn normalize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// The project name a requirement line starts with, if it starts with one.
fn leading_name(line: &str) -> Option<&str> {
    let end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .unwrap_or(line.len());
    let name = &line[..end];
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    first_ok.then_some(name)
}

fn invalid(source: &str, reason: String) -> Error {
    Error::InvalidConfig {
        field: "requirements",
        value: source.to_string(),
        reason,
    }
}

/// Options that name other files: the build context holds only the one file given.
const FILE_OPTIONS: [&str; 6] = [
    "-r",
    "--requirement",
    "-c",
    "--constraint",
    "-e",
    "--editable",
];

impl Requirements {
    /// Reads a requirements file (pip's format: one requirement per line, `#` comments,
    /// `\` continuations, global options such as `--pre` or `--extra-index-url`).
    pub fn from_requirements_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            invalid(
                &path.display().to_string(),
                format!("cannot read it ({e}); give a requirements.txt"),
            )
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Reads the `[project] dependencies` of a pyproject.toml, as the reference's
    /// "Building Custom Images" does.
    pub fn from_pyproject(path: &Path) -> Result<Self> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            invalid(
                &source,
                format!("cannot read it ({e}); give a pyproject.toml"),
            )
        })?;
        Self::parse_pyproject(&text, &source)
    }

    /// Parses pyproject.toml text (see [`Requirements::from_pyproject`]).
    pub fn parse_pyproject(text: &str, source: &str) -> Result<Self> {
        let doc: toml::Table = toml::from_str(text)
            .map_err(|e| invalid(source, format!("not valid TOML: {}", e.message())))?;
        let project = doc.get("project").and_then(toml::Value::as_table);
        let dynamic = project
            .and_then(|p| p.get("dynamic"))
            .and_then(toml::Value::as_array)
            .is_some_and(|d| d.iter().any(|v| v.as_str() == Some("dependencies")));
        if dynamic {
            return Err(invalid(
                source,
                "its dependencies are dynamic (computed by a build backend); list them in [project] dependencies, or give a requirements file".into(),
            ));
        }
        let deps = project
            .and_then(|p| p.get("dependencies"))
            .and_then(toml::Value::as_array)
            .ok_or_else(|| {
                invalid(
                    source,
                    "it has no [project] dependencies list; add one, e.g. dependencies = [\"scikit-learn\"]".into(),
                )
            })?;
        let mut lines = Vec::with_capacity(deps.len());
        for d in deps {
            let Some(dep) = d.as_str() else {
                return Err(invalid(source, format!("dependency {d:?} is not a string")));
            };
            let dep = dep.trim();
            if leading_name(dep).is_none() {
                return Err(invalid(
                    source,
                    format!("dependency {dep:?} does not start with a package name"),
                ));
            }
            lines.push(dep.to_string());
        }
        Self::finish(lines, source)
    }

    /// Parses requirements text (see [`Requirements::from_requirements_file`]).
    pub fn parse(text: &str, source: &str) -> Result<Self> {
        let mut lines = Vec::new();
        let mut pending = String::new();
        for raw in text.lines() {
            // A comment starts at `#` at the start of a line or after whitespace.
            let mut line = raw;
            for (i, _) in raw.match_indices('#') {
                if i == 0 || raw[..i].ends_with(char::is_whitespace) {
                    line = &raw[..i];
                    break;
                }
            }
            if let Some(cont) = line.strip_suffix('\\') {
                pending.push_str(cont);
                pending.push(' ');
                continue;
            }
            pending.push_str(line);
            let joined = pending.split_whitespace().collect::<Vec<_>>().join(" ");
            pending.clear();
            if !joined.is_empty() {
                lines.push(joined);
            }
        }
        let last = pending.split_whitespace().collect::<Vec<_>>().join(" ");
        if !last.is_empty() {
            lines.push(last);
        }
        for line in &lines {
            let first = line.split([' ', '=']).next().unwrap_or("");
            if FILE_OPTIONS.contains(&first) || line.starts_with("-r") || line.starts_with("-c") {
                return Err(invalid(
                    source,
                    format!("`{line}` names another file, which the build cannot see; list every package in this one file"),
                ));
            }
            if !line.starts_with('-') && leading_name(line).is_none() {
                return Err(invalid(
                    source,
                    format!("`{line}` does not start with a package name; local paths and bare URLs cannot be built (use `name @ https://...` for a URL)"),
                ));
            }
        }
        Self::finish(lines, source)
    }

    fn finish(mut lines: Vec<String>, source: &str) -> Result<Self> {
        lines.sort();
        lines.dedup();
        let reqs = Requirements {
            lines,
            source: source.to_string(),
        };
        if reqs.requested().is_empty() {
            return Err(invalid(
                source,
                "it lists no package; add one per line, e.g. scikit-learn>=1.3".into(),
            ));
        }
        Ok(reqs)
    }

    /// The packages asked for (option lines left out), in the order of the lines.
    pub fn requested(&self) -> Vec<Requested> {
        self.lines
            .iter()
            .filter(|l| !l.starts_with('-'))
            .filter_map(|l| {
                leading_name(l).map(|n| Requested {
                    name: normalize_name(n),
                    conditional: l.contains(';'),
                })
            })
            .collect()
    }

    /// The file the build installs from: the lines, one each, newline-terminated.
    pub fn text(&self) -> String {
        let mut t = self.lines.join("\n");
        t.push('\n');
        t
    }

    /// SHA-256 of [`Requirements::text`], in hex: what the build is keyed on.
    pub fn digest(&self) -> String {
        hex(&Sha256::digest(self.text().as_bytes()))
    }
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalized() {
        assert_eq!(normalize_name("Scikit_Learn"), "scikit-learn");
        assert_eq!(normalize_name("zope.interface"), "zope-interface");
        assert_eq!(normalize_name("a--_b"), "a-b");
    }

    #[test]
    fn requirements_are_read_as_pip_reads_them() {
        let r = Requirements::parse(
            "# packages\ntabulate>=0.9  # tables\n\nRequests[socks] \\\n  ==2.31\n--pre\nfoo; python_version < \"3.8\"\npkg @ https://x/y.whl#sha256=ab\n",
            "req.txt",
        )
        .unwrap();
        assert_eq!(
            r.lines,
            vec![
                "--pre",
                "Requests[socks] ==2.31",
                "foo; python_version < \"3.8\"",
                "pkg @ https://x/y.whl#sha256=ab",
                "tabulate>=0.9",
            ]
        );
        let names: Vec<_> = r.requested().into_iter().map(|q| q.name).collect();
        assert_eq!(names, vec!["requests", "foo", "pkg", "tabulate"]);
        assert!(r.requested()[1].conditional);
        assert!(r.text().ends_with("tabulate>=0.9\n"));
    }

    #[test]
    fn the_digest_is_of_content_not_of_order_or_comments() {
        let a = Requirements::parse("tabulate\ntoolz\n", "a").unwrap();
        let b = Requirements::parse("# mine\ntoolz\n\ntabulate  # x\n", "b").unwrap();
        let c = Requirements::parse("tabulate\n", "c").unwrap();
        assert_eq!(a.digest(), b.digest());
        assert_ne!(a.digest(), c.digest());
        assert_eq!(a.digest().len(), 64);
    }

    #[test]
    fn other_files_and_paths_are_refused() {
        for bad in [
            "-r other.txt",
            "--requirement=x.txt",
            "-e .",
            "./pkg.whl",
            "/abs/x",
        ] {
            let e = Requirements::parse(bad, "req.txt").unwrap_err().to_string();
            assert!(e.contains("req.txt"), "{e}");
        }
        let e = Requirements::parse("# nothing\n--pre\n", "req.txt")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no package"), "{e}");
    }

    #[test]
    fn pyproject_dependencies() {
        let r = Requirements::parse_pyproject(
            "[project]\nname = \"x\"\ndependencies = [\n  \"numpy>=1.24,<3\",\n  \"scikit-learn\",\n]\n",
            "pyproject.toml",
        )
        .unwrap();
        assert_eq!(r.lines, vec!["numpy>=1.24,<3", "scikit-learn"]);
        for bad in [
            "[project]\nname = \"x\"\n",
            "[project]\ndynamic = [\"dependencies\"]\n",
            "[project]\ndependencies = [1]\n",
            "[project\n",
        ] {
            assert!(Requirements::parse_pyproject(bad, "p").is_err(), "{bad}");
        }
    }
}
