//! The `biocage` command against real engines (BIOCAGE_TEST_ENGINES), every command
//! and exit code. Usage errors need no engine and always run.

use assert_cmd::Command;
use biocage_conformance::harness::skip_loudly;
use rstest::rstest;
use serde_json::Value;

fn engine_under_test(engine: &str) -> bool {
    match std::env::var("BIOCAGE_TEST_ENGINES") {
        Ok(v) if v.split(',').any(|e| e.trim() == engine) => true,
        Ok(v) => {
            skip_loudly(&format!(
                "SKIPPED: {engine} CLI tests do not run; it is not listed in BIOCAGE_TEST_ENGINES={v}"
            ));
            false
        }
        Err(_) => {
            skip_loudly("SKIPPED: CLI engine tests do not run; set BIOCAGE_TEST_ENGINES=docker,podman (scripts/test.sh does)");
            false
        }
    }
}

fn biocage(engine: &str) -> Command {
    let mut c = Command::cargo_bin("biocage").expect("binary built");
    c.args(["--runtime", engine]);
    c
}

/// Session flags the suite needs on every engine (rootless Podman on cgroup v1 holds
/// no cpu limit, so sessions there must allow that explicitly).
const RUN: [&str; 2] = ["run", "--allow-unenforced"];

/// The python_docker build context.
const CONTEXT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../python_docker");

/// Builds `tag` with `extra` build flags, then checks a sandbox of it imports the packages.
fn build_and_use(engine: &str, tag: &str, extra: &[&str]) {
    biocage(engine)
        .args(["image", "build", "--tag", tag, "--context", CONTEXT])
        .args(extra)
        .assert()
        .success();
    biocage(engine)
        .args(RUN)
        .args(["--image", tag])
        .write_stdin("import numpy, pandas, matplotlib; print('ok')")
        .assert()
        .success()
        .stdout("ok\n");
}

fn json_line(out: &[u8]) -> Value {
    let text = String::from_utf8_lossy(out);
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {text}"))
}

#[rstest]
#[case::docker("docker")]
#[case::podman("podman")]
fn run_prints_output_and_exits_with_the_result_code(#[case] engine: &str) {
    if !engine_under_test(engine) {
        return;
    }
    biocage(engine)
        .args(RUN)
        .arg("-")
        .write_stdin("print('Hello from BioCage!')")
        .assert()
        .success()
        .stdout("Hello from BioCage!\n");
    let out = biocage(engine)
        .args(["--json"])
        .args(RUN)
        .write_stdin("print('before')\nraise ValueError('bad')")
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let r = json_line(&out);
    assert_eq!(r["error"]["kind"], "exception");
    assert_eq!(r["stdout"], "before\n");
    let out = biocage(engine)
        .args(RUN)
        .args(["--timeout", "1", "--json"])
        .write_stdin("import time\ntime.sleep(30)")
        .assert()
        .code(124)
        .get_output()
        .stdout
        .clone();
    assert_eq!(json_line(&out)["error"]["kind"], "timeout");
    biocage(engine)
        .args(RUN)
        .args(["--memory", "128m"])
        .write_stdin("x = []\nwhile True:\n    x.append(bytearray(8 << 20))")
        .assert()
        .code(137);
}

#[rstest]
#[case::docker("docker")]
#[case::podman("podman")]
fn run_reads_files_and_honours_options(#[case] engine: &str) {
    if !engine_under_test(engine) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("job.py");
    std::fs::write(
        &file,
        "import os\nprint(os.environ['GREETING'], open('/data/in.txt').read())",
    )
    .unwrap();
    std::fs::write(dir.path().join("in.txt"), "from the host").unwrap();
    biocage(engine)
        .args(RUN)
        .args(["--env", "GREETING=hi", "--expose"])
        .arg(format!("{}:/data", dir.path().display()))
        .arg(&file)
        .assert()
        .success()
        .stdout("hi from the host\n");
}

#[rstest]
#[case::docker("docker")]
#[case::podman("podman")]
fn repl_json_answers_each_line_in_order(#[case] engine: &str) {
    if !engine_under_test(engine) {
        return;
    }
    let input = "{\"code\": \"x = 20\"}\nnot json\n{\"code\": \"print(x * 2 + 2)\", \"timeout\": 5}\n{\"code\": \"import time\\ntime.sleep(10)\", \"timeout\": 0.5}\n";
    let out = biocage(engine)
        .args(["--json", "repl", "--allow-unenforced"])
        .write_stdin(input)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let lines: Vec<Value> = String::from_utf8_lossy(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(lines[0]["success"], true);
    assert!(lines[1]["error"].as_str().unwrap().contains("line 2"));
    assert_eq!(lines[2]["stdout"], "42\n");
    assert_eq!(lines[3]["exit_code"], 124);
}

#[rstest]
#[case::docker("docker")]
#[case::podman("podman")]
fn repl_for_people_keeps_state_and_blocks(#[case] engine: &str) {
    if !engine_under_test(engine) {
        return;
    }
    // The last block has no empty line after it: it runs at the end of input all the same.
    let input = "def sq(v):\n    return v * v\n\nx = 7\nprint(sq(x))\nsq(3)\nfor c in '(:':\n    print(c)\n";
    biocage(engine)
        .args(["repl", "--allow-unenforced"])
        .write_stdin(input)
        .assert()
        .success()
        .stdout("49\n9\n(\n:\n");
}

#[rstest]
#[case::docker("docker")]
#[case::podman("podman")]
fn doctor_ps_gc(#[case] engine: &str) {
    if !engine_under_test(engine) {
        return;
    }
    let out = biocage(engine)
        .args(["--json", "doctor"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let d = json_line(&out);
    assert_eq!(d["ok"], true);
    assert_eq!(d["engine"]["engine"], engine);
    assert!(d["limits"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["name"] == "memory"));
    biocage(engine)
        .args(["doctor", "--image", "biocage-missing:0"])
        .assert()
        .code(69)
        .stdout(predicates::str::contains("image build"));
    let out = biocage(engine)
        .args(["--json", "ps"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert!(json_line(&out).is_array());
    biocage(engine).args(["gc"]).assert().success();
}

#[rstest]
#[case::docker("docker")]
#[case::podman("podman")]
fn image_build_through_the_engine_api(#[case] engine: &str) {
    if !engine_under_test(engine) {
        return;
    }
    // Built on top of the sandbox image: the packages are there already, so no index
    // is needed; this exercises the build path end to end.
    build_and_use(
        engine,
        "biocage-cli-test:latest",
        &["--base", "biocage:latest"],
    );
}

#[test]
fn usage_errors_are_one_sentence_and_exit_2() {
    let mut c = Command::cargo_bin("biocage").unwrap();
    c.args(["run", "--memory", "lots", "-"])
        .write_stdin("")
        .assert()
        .code(2)
        .stderr(predicates::str::contains("512m"));
    let mut c = Command::cargo_bin("biocage").unwrap();
    c.args(["run", "/definitely/not/here.py"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("cannot read"));
    let mut c = Command::cargo_bin("biocage").unwrap();
    c.args(["run", "--expose", "no-colon", "-"])
        .write_stdin("")
        .assert()
        .code(2)
        .stderr(predicates::str::contains("HOST:CONTAINER"));
    let mut c = Command::cargo_bin("biocage").unwrap();
    c.args(["run", "--expose", "/definitely/not/here:/data", "-"])
        .write_stdin("")
        .assert()
        .code(2)
        .stderr(predicates::str::contains("does not exist"));
    // A host system folder read-write: sandbox code could rewrite the host.
    for system in ["/etc:/data/x", "/:/data/x", "/usr/lib:/data/x"] {
        let mut c = Command::cargo_bin("biocage").unwrap();
        c.args(["run", "--expose-rw", system, "-"])
            .write_stdin("")
            .assert()
            .code(2)
            .stderr(predicates::str::contains("host system folder"));
    }
    let mut c = Command::cargo_bin("biocage").unwrap();
    c.args(["frobnicate"]).assert().code(2);
}

#[test]
fn an_unreachable_engine_exits_69_with_the_fix() {
    let mut c = Command::cargo_bin("biocage").unwrap();
    c.env("DOCKER_HOST", "unix:///definitely/not/here.sock")
        .args(["--runtime", "docker", "run", "-"])
        .write_stdin("print(1)")
        .assert()
        .code(69)
        .stderr(predicates::str::contains("Start Docker"));
    let mut c = Command::cargo_bin("biocage").unwrap();
    c.env("CONTAINER_HOST", "unix:///definitely/not/here.sock")
        .env("XDG_RUNTIME_DIR", "/definitely/not/here")
        .args(["--runtime", "podman", "ps"])
        .assert()
        .code(69)
        .stderr(predicates::str::contains("podman system service"));
}

#[rstest]
#[case::docker("docker")]
#[case::podman("podman")]
fn a_missing_image_exits_69_with_the_build_command(#[case] engine: &str) {
    if !engine_under_test(engine) {
        return;
    }
    biocage(engine)
        .args(RUN)
        .args(["--image", "biocage-missing:0", "-"])
        .write_stdin("print(1)")
        .assert()
        .code(69)
        .stderr(predicates::str::contains("image build"));
}

#[rstest]
#[case::docker("docker")]
#[case::podman("podman")]
fn repl_ctrl_c_interrupts_the_run_and_keeps_state(#[case] engine: &str) {
    use std::io::Write;
    use std::process::Stdio;
    if !engine_under_test(engine) {
        return;
    }
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("biocage"))
        .args(["--runtime", engine, "repl", "--allow-unenforced"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"x = 5\nimport time\ntime.sleep(60)\n")
        .unwrap();
    stdin.flush().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(4));
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    std::thread::sleep(std::time::Duration::from_millis(500));
    stdin.write_all(b"print(x + 1)\n").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("KeyboardInterrupt"), "{stderr}");
    assert_eq!(
        stdout, "6\n",
        "state survived the interrupt; stderr: {stderr}"
    );
}

#[rstest]
#[case::docker("docker")]
fn auto_says_which_engine_it_picked(#[case] engine: &str) {
    if !engine_under_test(engine) {
        return;
    }
    let mut c = Command::cargo_bin("biocage").unwrap();
    c.env_remove("BIOCAGE_LOG")
        .args(["--runtime", "auto", "-v", "ps"])
        .assert()
        .success()
        .stderr(predicates::str::contains("picked docker"));
}

#[rstest]
#[case::docker("docker")]
fn image_build_offline_path(#[case] engine: &str) {
    if !engine_under_test(engine) {
        return;
    }
    build_and_use(engine, "biocage-cli-offline:latest", &["--offline"]);
    biocage(engine)
        .args([
            "image",
            "build",
            "--offline",
            "--base",
            "python:3.11-slim",
            "--context",
            CONTEXT,
        ])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("requirements.txt"));
}

/// The terminal attack: an OSC 52 clipboard write, a screen clear and a fake banner on
/// stdout; colours, a C1 CSI, bidi overrides, a carriage return, ENQ and DEL on stderr;
/// an exception whose message retitles the window. Python escapes: the sandbox makes the
/// control characters, this file holds none.
const ATTACK: &str = r#"import sys
print('\x1b]52;c;Y3VybCBldmlsIHwgc2g=\x07\x1b[2J\x1b[HBioCage 0.1.0 on docker. All checks passed.')
sys.stdout.flush()
sys.stderr.write('\x1b[31mred\x9b\u202etxt\u2066\r\x05\x7f\tok\n')
raise ValueError('\x1b]0;pwned\x07')
"#;

/// What the attack writes to stdout, byte for byte.
const ATTACK_STDOUT: &str =
    "\x1b]52;c;Y3VybCBldmlsIHwgc2g=\x07\x1b[2J\x1b[HBioCage 0.1.0 on docker. All checks passed.\n";

/// What the attack writes to stderr before its traceback, byte for byte.
const ATTACK_STDERR: &str = "\x1b[31mred\u{9b}\u{202e}txt\u{2066}\r\x05\x7f\tok\n";

/// Quotes `s` for `sh -c`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs `biocage --runtime ENGINE ARGS REDIRECT` in a pseudo-terminal (util-linux
/// `script`): its stdout and stderr are a real terminal unless `redirect` sends one
/// elsewhere. Returns the exit code and every byte the terminal received.
fn in_a_terminal(engine: &str, args: &[&str], redirect: &str) -> (Option<i32>, Vec<u8>) {
    let bin = assert_cmd::cargo::cargo_bin("biocage");
    let mut line = sh_quote(bin.to_str().expect("UTF-8 path"));
    for a in ["--runtime", engine].iter().chain(args) {
        line.push(' ');
        line.push_str(&sh_quote(a));
    }
    line.push_str(redirect);
    let out = std::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("util-linux `script` gives these tests a pseudo-terminal; install util-linux");
    (out.status.code(), out.stdout)
}

/// Panics unless `term` is inert: no C0 control besides tab, newline and the carriage
/// return the terminal's line discipline puts before each newline; no DEL; no C1
/// control (UTF-8 C2 80-9F); no bidi override or isolate.
fn assert_inert(term: &[u8]) {
    let text = String::from_utf8_lossy(term);
    for (i, &b) in term.iter().enumerate() {
        let allowed = b == b'\t' || b == b'\n' || (b == b'\r' && term.get(i + 1) == Some(&b'\n'));
        assert!(
            allowed || (b >= 0x20 && b != 0x7f),
            "byte {b:#04x} at {i} reached the terminal raw: {text:?}"
        );
    }
    for c in text.chars() {
        assert!(
            !matches!(c, '\u{80}'..='\u{9f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'),
            "{c:?} reached the terminal raw: {text:?}"
        );
    }
}

#[rstest]
#[case::docker("docker")]
#[case::podman("podman")]
fn run_shows_sandbox_control_characters_inertly_on_a_terminal(#[case] engine: &str) {
    if !engine_under_test(engine) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("attack.py");
    std::fs::write(&file, ATTACK).unwrap();
    let file = file.to_str().unwrap();
    // -q: no spinner, whose own drawing uses escape sequences.
    let (code, term) = in_a_terminal(engine, &["-q", "run", "--allow-unenforced", file], "");
    let text = String::from_utf8_lossy(&term);
    assert_eq!(code, Some(1), "{text}");
    assert_inert(&term);
    for shown in [
        r"\x1b]52;c;Y3VybCBldmlsIHwgc2g=\x07\x1b[2J\x1b[HBioCage 0.1.0 on docker. All checks passed.",
        "\\x1b[31mred\\x9b\\u202etxt\\u2066\\x0d\\x05\\x7f\tok",
        r"ValueError: \x1b]0;pwned\x07",
    ] {
        assert!(text.contains(shown), "{shown:?} is not shown in {text:?}");
    }
    // Each stream is judged on its own: stdout to a file stays exact while stderr, still
    // the terminal, is shown inertly.
    let out = dir.path().join("stdout.txt");
    let redirect = format!(" > {}", sh_quote(out.to_str().unwrap()));
    let (code, term) = in_a_terminal(
        engine,
        &["-q", "run", "--allow-unenforced", file],
        &redirect,
    );
    assert_eq!(code, Some(1));
    assert_inert(&term);
    assert!(String::from_utf8_lossy(&term).contains(r"ValueError: \x1b]0;pwned\x07"));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), ATTACK_STDOUT);
}

#[rstest]
#[case::docker("docker")]
#[case::podman("podman")]
fn repl_shows_sandbox_control_characters_inertly_on_a_terminal(#[case] engine: &str) {
    if !engine_under_test(engine) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.py");
    // A value whose repr is raw escapes, printed output, and an exception.
    std::fs::write(
        &input,
        "class A:\n    def __repr__(self):\n        return '\\x1b]0;pwned\\x07\\u202e'\n\nA()\nprint('\\x1b[2J\\x9b')\nraise ValueError('\\x1b[H')\n",
    )
    .unwrap();
    let redirect = format!(" < {}", sh_quote(input.to_str().unwrap()));
    let (code, term) = in_a_terminal(engine, &["-q", "repl", "--allow-unenforced"], &redirect);
    let text = String::from_utf8_lossy(&term);
    assert_eq!(code, Some(0), "{text}");
    assert_inert(&term);
    for shown in [
        r"\x1b]0;pwned\x07\u202e",
        r"\x1b[2J\x9b",
        r"ValueError: \x1b[H",
    ] {
        assert!(text.contains(shown), "{shown:?} is not shown in {text:?}");
    }
}

#[rstest]
#[case::docker("docker")]
#[case::podman("podman")]
fn json_and_piped_output_stay_byte_exact(#[case] engine: &str) {
    if !engine_under_test(engine) {
        return;
    }
    let out = biocage(engine)
        .args(RUN)
        .write_stdin(ATTACK)
        .assert()
        .code(1)
        .get_output()
        .clone();
    assert_eq!(String::from_utf8_lossy(&out.stdout), ATTACK_STDOUT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with(ATTACK_STDERR), "{stderr:?}");
    assert!(
        stderr.contains("ValueError: \x1b]0;pwned\x07"),
        "{stderr:?}"
    );
    // --json on a terminal: JSON escapes control characters itself, and the values in it
    // are the sandbox's exact output.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("attack.py");
    std::fs::write(&file, ATTACK).unwrap();
    let (code, term) = in_a_terminal(
        engine,
        &[
            "--json",
            "run",
            "--allow-unenforced",
            file.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(code, Some(1));
    // JSON escapes every C0 control (ESC, BEL, CR...) itself; DEL, C1 and bidi
    // characters it carries as they are, and so does --json.
    assert!(
        !term.iter().enumerate().any(|(i, &b)| b < 0x20
            && !(b == b'\r' && term.get(i + 1) == Some(&b'\n'))
            && b != b'\n'),
        "{:?}",
        String::from_utf8_lossy(&term)
    );
    let r = json_line(&term);
    assert_eq!(r["stdout"], ATTACK_STDOUT);
    assert_eq!(
        r["stderr"].as_str().map(|s| s.starts_with(ATTACK_STDERR)),
        Some(true)
    );
    // The JSON interface of the REPL, on a pipe: exact too.
    let out = biocage(engine)
        .args(["--json", "repl", "--allow-unenforced"])
        .write_stdin(format!("{}\n", serde_json::json!({"code": ATTACK})))
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert_eq!(json_line(&out)["stdout"], ATTACK_STDOUT);
}
