//! The packages a custom image is asked for: a requirements file, or the
//! `[project] dependencies` of a pyproject.toml.
//!
//! Every line is understood before anything runs: requirements are parsed with the
//! PEP 508 grammar (pep508_rs), and the only options kept are a short list of global
//! ones in pip's full spelling. pip also reads any unambiguous prefix of a long option
//! (`--requireme`, `--editab`), attached short options (`-e/path`) and `${VAR}`
//! expansions; none of those is guessed at here: each is refused with what to write
//! instead. Direct references (`name @ URL`, paths) are recorded, and refused by the
//! build unless it allows them.

use std::path::Path;
use std::str::FromStr;

use pep508_rs::{Requirement, VersionOrUrl};
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
    /// The requirements that are direct references (`name @ URL`): the build refuses
    /// them unless it is told to allow them.
    pub direct: Vec<String>,
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

fn invalid(source: &str, reason: String) -> Error {
    Error::InvalidConfig {
        field: "requirements",
        value: source.to_string(),
        reason,
    }
}

/// Global options a requirements file may hold, in pip's full spelling, that take no
/// value.
const FLAGS: [&str; 2] = ["--pre", "--prefer-binary"];
/// Global options that take a value (`--opt VALUE` or `--opt=VALUE`; `-i` also as
/// `-iVALUE`). Index URLs must be http(s); nothing names a file.
const VALUED: [&str; 5] = [
    "--index-url",
    "-i",
    "--extra-index-url",
    "--trusted-host",
    "--only-binary",
];
/// Options that name an index (their value must be an http(s) URL).
const INDEX_OPTIONS: [&str; 3] = ["--index-url", "-i", "--extra-index-url"];

fn allowed_options() -> String {
    let mut all: Vec<&str> = FLAGS.to_vec();
    all.extend(VALUED);
    all.join(", ")
}

/// One parsed requirement line: the requirement and whether it is a direct reference.
struct Parsed {
    name: String,
    conditional: bool,
    direct: bool,
}

/// Checks one global option line (`--pre`, `--index-url URL`, ...).
fn check_option(line: &str) -> std::result::Result<(), String> {
    let mut words = line.split_whitespace();
    let first = words.next().unwrap_or_default();
    let rest: Vec<&str> = words.collect();
    let (name, attached) = match first.split_once('=') {
        Some((n, v)) if n.starts_with("--") => (n, Some(v)),
        _ if first.starts_with("-i") && first.len() > 2 && !first.starts_with("--") => {
            ("-i", Some(&first[2..]))
        }
        _ => (first, None),
    };
    if FLAGS.contains(&name) {
        if attached.is_some() || !rest.is_empty() {
            return Err(format!("`{name}` takes no value"));
        }
        return Ok(());
    }
    if !VALUED.contains(&name) {
        return Err(format!(
            "`{name}` is not an option a requirements file may hold here (pip would also take abbreviations and other files' names; BioCage allows only: {}); list packages one per line",
            allowed_options()
        ));
    }
    let value = match (attached, rest.as_slice()) {
        (Some(v), []) => v,
        (None, [v]) => *v,
        _ => return Err(format!("`{name}` takes exactly one value")),
    };
    if value.is_empty() {
        return Err(format!("`{name}` needs a value"));
    }
    if INDEX_OPTIONS.contains(&name)
        && !(value.starts_with("https://") || value.starts_with("http://"))
    {
        return Err(format!(
            "`{name} {value}`: a package index must be an http:// or https:// URL (folders of wheels go to --wheels)"
        ));
    }
    Ok(())
}

/// Parses one requirement line with the PEP 508 grammar; when `hashes`, `--hash=ALGO:HEX`
/// options may follow it (pip's hash-checking mode), nothing else.
fn parse_requirement(line: &str, hashes: bool) -> std::result::Result<Parsed, String> {
    // pip splits a line at the first word that starts with '-': options follow.
    let words: Vec<&str> = line.split_whitespace().collect();
    let split = words
        .iter()
        .position(|w| hashes && w.starts_with('-'))
        .unwrap_or(words.len());
    let spec = words[..split].join(" ");
    let mut options = words[split..].iter();
    while let Some(opt) = options.next() {
        let value = match opt.strip_prefix("--hash=") {
            Some(v) => v,
            None if *opt == "--hash" => options.next().copied().unwrap_or_default(),
            None => {
                return Err(format!(
                    "`{opt}` after a requirement is not allowed here (only --hash=ALGO:HEX may follow one)"
                ))
            }
        };
        let ok = value.split_once(':').is_some_and(|(algo, hex)| {
            matches!(algo, "sha256" | "sha384" | "sha512")
                && !hex.is_empty()
                && hex.chars().all(|c| c.is_ascii_hexdigit())
        });
        if !ok {
            return Err(format!(
                "`--hash {value}` is not ALGO:HEX (sha256, sha384 or sha512)"
            ));
        }
    }
    let req = Requirement::<pep508_rs::VerbatimUrl>::from_str(&spec).map_err(|e| {
        let first = e.to_string().lines().next().unwrap_or_default().to_string();
        format!(
            "`{spec}` is not a PEP 508 requirement ({first}); write a package name and optional version, e.g. scikit-learn>=1.3 (local paths and bare URLs cannot be built)"
        )
    })?;
    Ok(Parsed {
        name: normalize_name(req.name.as_ref()),
        conditional: !req.marker.is_true(),
        direct: matches!(req.version_or_url, Some(VersionOrUrl::Url(_))),
    })
}

/// Checks one logical line of a requirements file (or one pyproject dependency when
/// `options` is false): a requirement, or an allowed global option.
fn check_line(line: &str, options: bool) -> std::result::Result<Option<Parsed>, String> {
    if line.contains("${") {
        return Err(format!(
            "`{line}` holds a ${{VAR}} expansion, which pip would fill from its environment; write the value out"
        ));
    }
    if line.starts_with('-') {
        if !options {
            return Err(format!("`{line}` is an option, not a dependency"));
        }
        return check_option(line).map(|()| None);
    }
    parse_requirement(line, options).map(Some)
}

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
            let dep = dep.split_whitespace().collect::<Vec<_>>().join(" ");
            check_line(&dep, false).map_err(|why| invalid(source, format!("dependency {why}")))?;
            lines.push(dep);
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
            check_line(line, true).map_err(|why| invalid(source, why))?;
        }
        Self::finish(lines, source)
    }

    fn finish(mut lines: Vec<String>, source: &str) -> Result<Self> {
        lines.sort();
        lines.dedup();
        let direct = lines
            .iter()
            .filter(|l| matches!(check_line(l, true), Ok(Some(p)) if p.direct))
            .cloned()
            .collect();
        let reqs = Requirements {
            lines,
            source: source.to_string(),
            direct,
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
            .filter_map(|l| check_line(l, true).ok().flatten())
            .map(|p| Requested {
                name: p.name,
                conditional: p.conditional,
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
            // Spellings pip accepts that a first-word check missed.
            "-e/path/to/project",
            "-r/etc/shadow",
            "-c/etc/shadow",
            "--requireme /etc/shadow",
            "--constrai /etc/shadow",
            "--editab /srv/project",
            "--edit=/srv/project",
            "--find-links /srv/wheels",
            "-f /srv/wheels",
            "--no-index",
            "--use-feature=truststore",
            "--config-settings x=y",
            "--index-url file:///etc",
            "-ifile:///etc",
            "--extra-index-url /srv/index",
            "--pre now",
            "--index-url",
            "https://example.org/pkg-1.0.tar.gz",
            "git+https://example.org/repo.git",
            "file:///srv/evil-1.0.tar.gz",
            "evil==1.0 --global-option=--x",
            "evil==1.0 --install-option=--prefix=/",
            "evil==1.0 -e/srv/x",
            "evil==1.0 --hash=md5:abc",
            "evil @ file://${HOME}/evil.tar.gz",
            "--extra-index-url https://${TOKEN}@example.org/simple",
            "evil[",
            "evil (>=",
        ] {
            let e = Requirements::parse(&format!("tabulate\n{bad}\n"), "req.txt")
                .err()
                .unwrap_or_else(|| panic!("{bad:?} was accepted"))
                .to_string();
            assert!(e.contains("req.txt"), "{e}");
        }
        let e = Requirements::parse("# nothing\n--pre\n", "req.txt")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no package"), "{e}");
    }

    #[test]
    fn allowed_options_and_hashes_are_understood() {
        let r = Requirements::parse(
            "--pre\n--prefer-binary\n--index-url https://pypi.example/simple\n-ihttps://i.example/simple\n--extra-index-url=https://x.example/simple\n--trusted-host x.example\n--only-binary :all:\ntabulate==0.9.0 --hash=sha256:0123abcd --hash sha256:ffee\n",
            "req.txt",
        )
        .unwrap();
        assert_eq!(r.requested().len(), 1);
        assert!(r.direct.is_empty());
    }

    #[test]
    fn direct_references_are_recorded() {
        let r = Requirements::parse(
            "tabulate\nevil @ file:///srv/evil-1.0.tar.gz\nother @ https://example.org/o-1.0-py3-none-any.whl\n",
            "req.txt",
        )
        .unwrap();
        assert_eq!(r.direct.len(), 2, "{:?}", r.direct);
        let p = Requirements::parse_pyproject(
            "[project]\ndependencies = [\"evil @ file:///srv/evil-1.0.tar.gz\"]\n",
            "pyproject.toml",
        )
        .unwrap();
        assert_eq!(p.direct.len(), 1);
        for bad in ["--pre", "-e/srv/x", "./x", "evil==1 --hash=sha256:ab"] {
            let text = format!("[project]\ndependencies = [\"{bad}\"]\n");
            assert!(Requirements::parse_pyproject(&text, "p").is_err(), "{bad}");
        }
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
