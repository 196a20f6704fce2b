//! The human REPL through a real terminal (tmux), and scripts run as `python job.py`
//! runs them, against the engines in BIOCAGE_TEST_ENGINES.

use std::process::Command;
use std::time::{Duration, Instant};

use biocage_conformance::harness::skip_loudly;
use rstest::rstest;

fn engine_under_test(engine: &str) -> bool {
    match std::env::var("BIOCAGE_TEST_ENGINES") {
        Ok(v) if v.split(',').any(|e| e.trim() == engine) => true,
        Ok(v) => {
            skip_loudly(&format!(
                "SKIPPED: {engine} interactive tests do not run; it is not listed in BIOCAGE_TEST_ENGINES={v}"
            ));
            false
        }
        Err(_) => {
            skip_loudly("SKIPPED: interactive engine tests do not run; set BIOCAGE_TEST_ENGINES=docker,podman (scripts/test.sh does)");
            false
        }
    }
}

/// A tmux session running one command; killed when dropped.
struct Tmux {
    name: String,
}

impl Tmux {
    fn start(name: &str, command: &str, env: &[(&str, &str)]) -> Self {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", name])
            .stderr(std::process::Stdio::null())
            .status();
        let mut c = Command::new("tmux");
        c.args(["new-session", "-d", "-s", name, "-x", "160", "-y", "50"]);
        for (k, v) in env {
            c.args(["-e", &format!("{k}={v}")]);
        }
        let status = c.arg(command).status().expect("tmux is installed");
        assert!(status.success(), "tmux new-session failed");
        Tmux {
            name: name.to_string(),
        }
    }

    fn pane(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-J", "-t", &self.name])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    fn keys(&self, keys: &[&str]) {
        let status = Command::new("tmux")
            .args(["send-keys", "-t", &self.name])
            .args(keys)
            .status()
            .expect("tmux send-keys");
        assert!(status.success());
    }

    /// Whether the command still runs (its tmux session ends with it).
    fn alive(&self) -> bool {
        Command::new("tmux")
            .args(["has-session", "-t", &self.name])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Waits until the screen satisfies `pred`; panics with the screen after 60 s.
    fn wait(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            let screen = self.pane();
            if pred(&screen) {
                return screen;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "waited for {what}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.name])
            .status();
    }
}

fn prompts(screen: &str) -> usize {
    screen.lines().filter(|l| l.starts_with(">>> ")).count()
}

/// Prompts before input, continuation decided by Python's codeop, tab completion from
/// the live namespace, history kept across sessions.
#[rstest]
#[case::docker("docker")]
#[case::podman("podman")]
fn human_repl_edits_completes_and_remembers(#[case] engine: &str) {
    if !engine_under_test(engine) {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let bin = assert_cmd::cargo::cargo_bin("biocage");
    let command = format!(
        "{} --runtime {engine} repl --allow-unenforced",
        bin.display()
    );
    let env = [("XDG_DATA_HOME", data.path().to_str().unwrap())];
    let name = format!("biocage-repl-{engine}-{}", std::process::id());
    let t = Tmux::start(&name, &command, &env);
    t.wait("the first prompt", |s| s.contains(">>> "));
    t.keys(&["my_value = 41", "Enter"]);
    t.wait("a second prompt", |s| prompts(s) >= 2);
    t.keys(&["for i in range(2):", "Enter"]);
    t.wait("a continuation prompt", |s| s.contains("... "));
    t.keys(&["    print('got', i + my_value)", "Enter"]);
    t.wait("a second continuation prompt", |s| {
        s.matches("... ").count() >= 2
    });
    t.keys(&["Enter"]);
    let screen = t.wait("the loop's output", |s| s.contains("got 42"));
    assert!(screen.contains("got 41"), "{screen}");
    t.keys(&["my_v", "Tab"]);
    t.wait("the completed name", |s| {
        s.lines().any(|l| l.starts_with(">>> my_value"))
    });
    t.keys(&[" + 1", "Enter"]);
    t.wait("the value", |s| s.lines().any(|l| l.trim() == "42"));
    t.keys(&["C-d"]);
    let started = Instant::now();
    while t.alive() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "Ctrl-D did not end the REPL:\n{}",
            t.pane()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(t);
    // A new session remembers the last one's inputs.
    let t = Tmux::start(&name, &command, &env);
    t.wait("the first prompt", |s| s.contains(">>> "));
    t.keys(&["Up"]);
    t.wait("the last input from history", |s| {
        s.contains(">>> my_value + 1")
    });
}

/// `biocage run job.py -- ARGS`: sys.argv, __file__, argparse, and the script's own
/// exit status as the command's.
#[rstest]
#[case::docker("docker")]
#[case::podman("podman")]
fn scripts_get_their_arguments_and_exit_status(#[case] engine: &str) {
    if !engine_under_test(engine) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.py");
    std::fs::write(
        &job,
        "import argparse, sys\np = argparse.ArgumentParser()\np.add_argument('--n', type=int)\na = p.parse_args()\nprint(sys.argv, __file__)\nsys.exit(a.n)\n",
    )
    .unwrap();
    let out = assert_cmd::Command::cargo_bin("biocage")
        .unwrap()
        .args(["--runtime", engine, "run", "--allow-unenforced"])
        .arg(&job)
        .args(["--", "--n", "3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "['job.py', '--n', '3'] /workspace/job.py\n"
    );
    assert!(out.stderr.is_empty(), "sys.exit says nothing more: {out:?}");
}

/// `repl --json`: a streamed request gets its output as events before its result; with
/// `--pool`, a reset hands over a fresh sandbox (the old state is gone).
#[rstest]
#[case::docker("docker")]
#[case::podman("podman")]
fn json_repl_streams_and_resets_from_a_pool(#[case] engine: &str) {
    if !engine_under_test(engine) {
        return;
    }
    let input = [
        r#"{"code": "x = 1\nprint('a')\ndisplay(2)\nprint('b')", "stream": true}"#,
        r#"{"reset": true}"#,
        r#"{"code": "'x' in globals()"}"#,
    ]
    .join("\n");
    let out = assert_cmd::Command::cargo_bin("biocage")
        .unwrap()
        .args([
            "--runtime",
            engine,
            "--json",
            "repl",
            "--pool",
            "2",
            "--allow-unenforced",
        ])
        .write_stdin(input)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let events: Vec<&str> = lines
        .iter()
        .take_while(|l| l.get("event").is_some())
        .map(|l| l["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["stdout", "display", "stdout"], "{lines:?}");
    assert_eq!(lines[3]["stdout"], "a\nb\n", "then the whole result");
    assert_eq!(lines[4]["reset"], true);
    assert_eq!(
        lines[5]["value"], "False",
        "a fresh sandbox after the reset"
    );
}
