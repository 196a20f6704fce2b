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
