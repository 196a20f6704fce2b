//! Reading build output: which step runs, which package pip is on, whether the engine
//! reused its cache, and pip's own error lines when something failed.

use super::BuildEvent;

/// Removes terminal escape sequences (Docker colours the output of build steps).
pub(crate) fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // Parameters and intermediates, then one final byte in @..~.
                for f in chars.by_ref() {
                    if ('@'..='~').contains(&f) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// "3/5" and the instruction of an engine's step header: Docker's `Step 3/5 : RUN ...`
/// or Podman's `STEP 3/5: RUN ...`.
pub(crate) fn step_header(line: &str) -> Option<(&str, &str)> {
    let rest = line
        .strip_prefix("Step ")
        .or_else(|| line.strip_prefix("STEP "))?;
    let (count, instruction) = rest.split_once(':')?;
    let count = count.trim();
    let (n, m) = count.split_once('/')?;
    if n.parse::<u32>().is_err() || m.parse::<u32>().is_err() {
        return None;
    }
    Some((count, instruction.trim()))
}

/// pip's lines that say which package it is on.
fn package_line(line: &str) -> bool {
    [
        "Collecting ",
        "Processing ",
        "Downloading ",
        "Saved ",
        "File was already downloaded ",
        "Installing collected packages:",
        "Successfully installed ",
        "Requirement already satisfied:",
        "Looking in links:",
    ]
    .iter()
    .any(|p| line.trim_start().starts_with(p))
}

/// A one-line summary of a build in progress, for a spinner: the phase, the engine's
/// step, and what pip is doing.
#[derive(Debug, Clone, Default)]
pub struct BuildStatus {
    phase: String,
    step: String,
    detail: String,
}

impl BuildStatus {
    /// Takes in one event; true when the summary changed.
    pub fn update(&mut self, event: &BuildEvent<'_>) -> bool {
        match event {
            BuildEvent::Phase(p) => {
                self.phase = p.to_string();
                self.step.clear();
                self.detail.clear();
                true
            }
            BuildEvent::Line(l) => {
                let line = strip_ansi(l);
                let line = line.trim();
                if let Some((count, instruction)) = step_header(line) {
                    let word = instruction.split_whitespace().next().unwrap_or("");
                    self.step = format!("step {count} {word}");
                    self.detail.clear();
                    true
                } else if package_line(line) {
                    // Paths shortened to their file names: the package is what matters.
                    let short: Vec<&str> = line
                        .split_whitespace()
                        .map(|w| w.rsplit('/').next().unwrap_or(w))
                        .collect();
                    self.detail = short.join(" ").chars().take(80).collect();
                    true
                } else {
                    false
                }
            }
        }
    }

    /// The engine's step and pip's package ("step 4/5 RUN: Collecting tabulate"), or
    /// the phase when there is neither yet.
    pub fn detail(&self) -> String {
        let parts: Vec<&str> = [self.step.as_str(), self.detail.as_str()]
            .into_iter()
            .filter(|p| !p.is_empty())
            .collect();
        if parts.is_empty() {
            self.phase.clone()
        } else {
            parts.join(": ")
        }
    }

    /// "installing 1 package on biocage:latest: step 4/5 RUN: Collecting tabulate".
    pub fn summary(&self) -> String {
        let mut s = self.phase.clone();
        for part in [&self.step, &self.detail] {
            if !part.is_empty() {
                s.push_str(if s.is_empty() { "" } else { ": " });
                s.push_str(part);
            }
        }
        s
    }
}

/// What a build printed, kept for its result and its error message.
#[derive(Debug, Default)]
pub(crate) struct BuildLog {
    steps: u32,
    cached: u32,
    errors: Vec<String>,
    unreachable: bool,
    tail: std::collections::VecDeque<String>,
}

impl BuildLog {
    /// Records one line of engine output.
    pub(super) fn record(&mut self, line: &str) {
        let line = strip_ansi(line);
        let line = line.trim_end();
        if step_header(line.trim()).is_some() {
            self.steps += 1;
        }
        if line.contains("Using cache") {
            self.cached += 1;
        }
        let t = line.trim_start();
        if t.starts_with("WARNING: Retrying")
            || t.contains("Failed to establish a new connection")
            || t.contains("SSLError")
            || t.contains("Temporary failure in name resolution")
        {
            self.unreachable = true;
        }
        if line.trim_start().starts_with("ERROR:") {
            self.errors.push(line.trim().to_string());
        }
        if !line.trim().is_empty() {
            if self.tail.len() == 12 {
                self.tail.pop_front();
            }
            self.tail.push_back(line.trim().to_string());
        }
    }

    /// True when every step after FROM came from the engine's cache.
    pub(super) fn all_cached(&self) -> bool {
        self.steps > 0 && self.cached + 1 >= self.steps
    }

    /// pip's `ERROR:` lines, else the last lines of output.
    pub(super) fn failure_text(&self) -> String {
        if self.errors.is_empty() {
            let n = self.tail.len();
            self.tail
                .iter()
                .skip(n.saturating_sub(4))
                .cloned()
                .collect::<Vec<_>>()
                .join(" / ")
        } else {
            self.errors.join(" ")
        }
    }

    /// Whether pip said it could not reach the package index.
    pub(super) fn index_unreachable(&self) -> bool {
        self.unreachable
    }

    /// Whether pip reported an error.
    pub(super) fn pip_failed(&self) -> bool {
        !self.errors.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_packages_make_the_summary() {
        let mut s = BuildStatus::default();
        s.update(&BuildEvent::Phase("installing 1 package on biocage:latest"));
        assert!(s.update(&BuildEvent::Line("Step 4/5 : RUN PIP_BREAK=1 python3 ...")));
        assert!(s.update(&BuildEvent::Line(
            "\u{1b}[91mCollecting tabulate\n\u{1b}[0m"
        )));
        assert!(!s.update(&BuildEvent::Line(" ---> Running in abc")));
        assert_eq!(
            s.summary(),
            "installing 1 package on biocage:latest: step 4/5 RUN: Collecting tabulate"
        );
        assert_eq!(s.detail(), "step 4/5 RUN: Collecting tabulate");
        assert!(s.update(&BuildEvent::Line(
            "Saved /tmp/b-1/wheels/toolz-1.2.0-py3-none-any.whl"
        )));
        assert!(s
            .summary()
            .ends_with("RUN: Saved toolz-1.2.0-py3-none-any.whl"));
        assert!(s.update(&BuildEvent::Line("STEP 2/3: COPY x y")));
        assert!(s.summary().ends_with("step 2/3 COPY"));
    }

    #[test]
    fn the_log_keeps_pip_errors_and_cache_use() {
        let mut log = BuildLog::default();
        for l in [
            "Step 1/3 : FROM sha256:abc",
            " ---> abc",
            "Step 2/3 : COPY r.txt /tmp",
            " ---> Using cache",
            "Step 3/3 : RUN pip install",
            " ---> Using cache",
        ] {
            log.record(l);
        }
        assert!(log.all_cached());
        log.record("\u{1b}[91mERROR: No matching distribution found for nope\n\u{1b}[0m");
        assert!(log.pip_failed());
        assert_eq!(
            log.failure_text(),
            "ERROR: No matching distribution found for nope"
        );
        let mut fresh = BuildLog::default();
        for l in ["STEP 1/2: FROM x", "STEP 2/2: RUN y", "ok"] {
            fresh.record(l);
        }
        assert!(!fresh.all_cached());
    }
}
