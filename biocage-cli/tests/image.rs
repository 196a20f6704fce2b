//! Custom images on real engines (BIOCAGE_TEST_ENGINES): `biocage image build` with a
//! requirements file or a pyproject.toml installs exactly those packages, fails clearly
//! when one cannot be installed, and rebuilds when (and only when) the packages change.
//!
//! The packages are ones the default image lacks (tabulate, toolz); their wheels were
//! downloaded by scripts/setup.sh into biocage-cli/tests/wheels, and the
//! builds are offline from that folder, so the tests need no network.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use biocage_conformance::harness::skip_loudly;
use rstest::rstest;
use serde_json::Value;

fn engine_under_test(engine: &str) -> bool {
    match std::env::var("BIOCAGE_TEST_ENGINES") {
        Ok(v) if v.split(',').any(|e| e.trim() == engine) => true,
        Ok(v) => {
            skip_loudly(&format!(
                "SKIPPED: {engine} image tests do not run; it is not listed in BIOCAGE_TEST_ENGINES={v}"
            ));
            false
        }
        Err(_) => {
            skip_loudly("SKIPPED: image engine tests do not run; set BIOCAGE_TEST_ENGINES=docker,podman (scripts/test.sh does)");
            false
        }
    }
}

fn biocage(engine: &str) -> Command {
    let mut c = Command::cargo_bin("biocage").expect("binary built");
    c.args(["--runtime", engine]);
    c
}

/// The wheels scripts/setup.sh downloads for these tests.
fn wheels() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/wheels");
    for pkg in ["tabulate-", "toolz-", "pip-"] {
        let found = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .any(|e| e.file_name().to_string_lossy().starts_with(pkg))
            })
            .unwrap_or(false);
        assert!(
            found,
            "no {pkg}*.whl in {}: run `sudo scripts/setup.sh` (it downloads the test wheels there)",
            dir.display()
        );
    }
    dir
}

fn json_line(out: &[u8]) -> Value {
    let text = String::from_utf8_lossy(out);
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {text}"))
}

/// `biocage --json image build --offline --wheels WHEELS --tag TAG ARGS`, which must
/// succeed; returns its one JSON object.
fn build_offline(engine: &str, tag: &str, args: &[&str]) -> Value {
    let wheels = wheels();
    let out = biocage(engine)
        .args([
            "--json",
            "image",
            "build",
            "--offline",
            "--tag",
            tag,
            "--wheels",
        ])
        .arg(&wheels)
        .args(args)
        .assert()
        .success()
        .get_output()
        .clone();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        1,
        "--json prints one object"
    );
    json_line(&out.stdout)
}

/// Runs `code` in a session on `image`; returns (exit code, stdout, stderr).
fn run_on(engine: &str, image: &str, code: &str) -> (Option<i32>, String, String) {
    let out = biocage(engine)
        .args(["run", "--allow-unenforced", "--image", image, "-"])
        .write_stdin(code)
        .output()
        .expect("biocage runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write a test file");
    p
}

#[rstest]
#[case::docker("docker")]
#[case::podman("podman")]
fn a_custom_image_has_the_package_the_default_image_lacks(#[case] engine: &str) {
    if !engine_under_test(engine) {
        return;
    }
    let (code, _, stderr) = run_on(engine, "biocage:latest", "import tabulate");
    assert_eq!(
        code,
        Some(1),
        "the default image must lack tabulate: {stderr}"
    );
    assert!(stderr.contains("ModuleNotFoundError"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let req = file(dir.path(), "requirements.txt", "tabulate\n");
    let tag = format!("biocage-test-{engine}-tab:latest");
    let req_arg = req.to_str().unwrap();
    let built = build_offline(
        engine,
        &tag,
        &["--base", "biocage:latest", "--requirements", req_arg],
    );
    assert_eq!(built["tag"], tag.as_str());
    assert_eq!(built["engine"], engine);
    assert!(
        built["image_id"].as_str().unwrap().starts_with("sha256:"),
        "{built}"
    );
    assert!(built["size"].as_u64().unwrap() > 0, "{built}");
    assert!(
        built["python"].as_str().unwrap().starts_with("3."),
        "{built}"
    );
    let version = built["packages"]["tabulate"]
        .as_str()
        .unwrap_or_else(|| panic!("tabulate is not among the packages: {built}"))
        .to_string();

    let (code, stdout, stderr) = run_on(
        engine,
        &tag,
        "import tabulate\nprint(tabulate.__version__)\nprint(tabulate.tabulate([[1, 2]], tablefmt='plain'))",
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, format!("{version}\n1  2\n"));

    // The same requirements again: the engine's cache, the same image.
    let again = build_offline(engine, &tag, &["--requirements", req_arg]);
    assert_eq!(again["image_id"], built["image_id"]);
    assert_eq!(again["cached"], true, "{again}");

    // `image ls` lists it with its recipe; doctor reports its Python and packages.
    let out = biocage(engine)
        .args(["--json", "image", "ls"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let list = json_line(&out);
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == built["image_id"])
        .unwrap_or_else(|| panic!("{tag} is not listed: {list}"));
    assert_eq!(entry["packages"]["tabulate"], version.as_str());
    assert_eq!(entry["recipe"], "biocage:latest + tabulate");
    assert_eq!(entry["kind"], "custom");
    let out = biocage(engine)
        .args(["--json", "doctor", "--image", &tag])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let doctor = json_line(&out);
    assert_eq!(doctor["image"]["packages"]["tabulate"], version.as_str());
    assert_eq!(doctor["image"]["python"], built["python"]);
    let out = biocage(engine)
        .args(["image", "ls"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let table = String::from_utf8_lossy(&out);
    assert!(
        table.contains(&format!("biocage:latest + tabulate (tabulate {version})")),
        "{table}"
    );
}

#[rstest]
#[case::docker("docker")]
#[case::podman("podman")]
fn a_package_that_does_not_exist_fails_the_build_with_pips_message(#[case] engine: &str) {
    if !engine_under_test(engine) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let req = file(
        dir.path(),
        "requirements.txt",
        "tabulate\nbiocage-no-such-package-x7\n",
    );
    let tag = format!("biocage-test-{engine}-missing:latest");
    // Offline: pip in the build's container finds no wheel for it.
    let out = biocage(engine)
        .args(["image", "build", "--offline", "--tag", &tag, "--wheels"])
        .arg(wheels())
        .arg("--requirements")
        .arg(&req)
        .assert()
        .code(1)
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("building {tag} failed"))
            && stderr.contains("No matching distribution found for biocage-no-such-package-x7"),
        "{stderr}"
    );
    // Through the package index, in the build's container: pip's own line again, never
    // "built" (the index may be unreachable here; either way the build fails).
    // (The wheels folder gives pip itself to the pip-less base: fetching it needs a
    // sandbox with network, which rootless Podman here has not.)
    let out = biocage(engine)
        .args(["--json", "image", "build", "--tag", &tag, "--wheels"])
        .arg(wheels())
        .arg("--requirements")
        .arg(&req)
        .assert()
        .code(1)
        .get_output()
        .clone();
    let err = json_line(&out.stdout);
    let message = err["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("pip could not install the packages of")
            && message.contains("ERROR:")
            && message.contains("biocage-no-such-package-x7"),
        "{err}"
    );
    // No image was made under that name.
    biocage(engine)
        .args(["doctor", "--image", &tag])
        .assert()
        .code(69);
    // A file that names no package is refused before anything is built.
    let empty = file(dir.path(), "empty.txt", "# nothing yet\n");
    biocage(engine)
        .args(["image", "build", "--tag", &tag, "--requirements"])
        .arg(&empty)
        .assert()
        .code(2)
        .stderr(predicates::str::contains("lists no package"));
}

#[rstest]
#[case::docker("docker")]
#[case::podman("podman")]
fn changed_requirements_change_the_image(#[case] engine: &str) {
    if !engine_under_test(engine) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tag = format!("biocage-test-{engine}-change:latest");
    // Requirements of this test's own ("tabulate>=0.8", not the "tabulate" of the test
    // above): tests run at once, and a build of the same content elsewhere would race
    // for the cache.
    // The reference's way: dependencies in a pyproject.toml.
    let pyproject = file(
        dir.path(),
        "pyproject.toml",
        "[project]\nname = \"mine\"\nversion = \"0.1.0\"\ndependencies = [\"tabulate>=0.8\"]\n",
    );
    let first = build_offline(engine, &tag, &["--pyproject", pyproject.to_str().unwrap()]);
    assert!(first["packages"]["tabulate"].is_string(), "{first}");
    let (code, _, stderr) = run_on(engine, &tag, "import tabulate");
    assert_eq!(code, Some(0), "{stderr}");

    // Other requirements: another image, with toolz and without tabulate (exactly what
    // is asked, on the same base).
    let req = file(dir.path(), "requirements.txt", "toolz>=0.10\n");
    let second = build_offline(engine, &tag, &["--requirements", req.to_str().unwrap()]);
    assert_ne!(second["image_id"], first["image_id"]);
    assert!(second["packages"]["toolz"].is_string(), "{second}");
    assert!(second["packages"]["tabulate"].is_null(), "{second}");
    let (code, stdout, stderr) = run_on(
        engine,
        &tag,
        "import toolz\nprint(toolz.__name__)\ntry:\n    import tabulate\nexcept ImportError:\n    print('no tabulate')",
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "toolz\nno tabulate\n");

    // Back to tabulate, now from a requirements file: the content is what counts, so the
    // engine's cache gives back the first image.
    let back = file(
        dir.path(),
        "again.txt",
        "# the same package\ntabulate>=0.8\n",
    );
    let third = build_offline(engine, &tag, &["--requirements", back.to_str().unwrap()]);
    assert_eq!(third["image_id"], first["image_id"]);
    assert_eq!(third["cached"], true, "{third}");
}

/// `Session::info` reports the packages the image was built with.
#[rstest]
#[case::docker("docker")]
#[case::podman("podman")]
fn session_info_reports_the_image_packages(#[case] engine: &str) {
    if !engine_under_test(engine) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let req = file(dir.path(), "requirements.txt", "toolz\n");
    let tag = format!("biocage-test-{engine}-info:latest");
    let built = build_offline(engine, &tag, &["--requirements", req.to_str().unwrap()]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let runtime: Box<dyn biocage_core::SandboxRuntime> = match engine {
            "docker" => Box::new(biocage_docker::DockerRuntime::connect().await.unwrap()),
            _ => Box::new(biocage_podman::PodmanRuntime::connect().await.unwrap()),
        };
        let config = biocage_core::SandboxConfig::builder()
            .image(&tag)
            .allow_unenforced_limits(true)
            .build()
            .unwrap();
        let session = runtime.create_session(&config).await.unwrap();
        let info = session.info().await.unwrap();
        session.close().await.unwrap();
        assert_eq!(
            info.image_packages.get("toolz").map(String::as_str),
            built["packages"]["toolz"].as_str()
        );
        assert_eq!(Some(info.python_version.as_str()), built["python"].as_str());
    });
}

/// A source distribution whose build backend (`backend-path = ["."]`) writes `marker`
/// the moment any pip imports it: proof of package code run wherever pip runs.
fn evil_project(dir: &Path, marker: &Path) -> (PathBuf, PathBuf) {
    let project = dir.join("evil-1.0");
    std::fs::create_dir_all(&project).unwrap();
    file(
        &project,
        "pyproject.toml",
        "[project]\nname = \"evil\"\nversion = \"1.0\"\n[build-system]\nrequires = []\nbuild-backend = \"backend\"\nbackend-path = [\".\"]\n",
    );
    file(
        &project,
        "backend.py",
        &format!(
            "open({:?}, 'w').write('ran')\n",
            marker.display().to_string()
        ),
    );
    file(
        &project,
        "PKG-INFO",
        "Metadata-Version: 2.1\nName: evil\nVersion: 1.0\n",
    );
    let sdist = dir.join("evil-1.0.tar.gz");
    let status = std::process::Command::new("tar")
        .arg("czf")
        .arg(&sdist)
        .arg("-C")
        .arg(dir)
        .arg("evil-1.0")
        .status()
        .expect("tar runs");
    assert!(status.success());
    (project, sdist)
}

/// Image builds run no code from a package, a requirements file or a project on the
/// host, whatever the input: direct references and every option spelling pip accepts
/// that names a file are refused before anything runs; allowed sources are fetched and
/// built in the build's container only.
#[rstest]
#[case::docker("docker")]
#[case::podman("podman")]
fn image_builds_run_no_package_code_on_the_host(#[case] engine: &str) {
    if !engine_under_test(engine) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("backend-ran-on-the-host");
    let (project, sdist) = evil_project(dir.path(), &marker);
    let secret = file(dir.path(), "secret.txt", "SECRET-CANARY-4711\n");
    let tag = format!("biocage-test-{engine}-evil:latest");
    let pyproject = file(
        dir.path(),
        "pyproject.toml",
        &format!(
            "[project]\nname = \"x\"\ndependencies = [\"evil @ file://{}\"]\n",
            sdist.display()
        ),
    );
    let attacks = [
        format!("tabulate\nevil @ file://{}\n", sdist.display()),
        format!("tabulate\n-e{}\n", project.display()),
        format!("tabulate\n--editab {}\n", project.display()),
        format!("tabulate\n--requireme {}\n", secret.display()),
        format!("tabulate\n--constrai {}\n", secret.display()),
        format!("tabulate\n-r{}\n", secret.display()),
        format!("tabulate\nfile://{}\n", sdist.display()),
        format!("tabulate\n{}\n", sdist.display()),
    ];
    for (i, text) in attacks.iter().enumerate() {
        let req = file(dir.path(), &format!("req-{i}.txt"), text);
        let out = biocage(engine)
            .args(["image", "build", "--offline", "--tag", &tag, "--wheels"])
            .arg(wheels())
            .arg("--requirements")
            .arg(&req)
            .output()
            .expect("biocage runs");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            out.status.code(),
            Some(2),
            "{text:?} was not refused: {all}"
        );
        assert!(
            !all.contains("SECRET-CANARY"),
            "{text:?} quoted a host file: {all}"
        );
        assert!(!marker.exists(), "{text:?} ran package code on the host");
    }
    let out = biocage(engine)
        .args(["image", "build", "--offline", "--tag", &tag, "--wheels"])
        .arg(wheels())
        .arg("--pyproject")
        .arg(&pyproject)
        .output()
        .expect("biocage runs");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("direct reference"),
        "{out:?}"
    );
    // Allowed, a direct reference is fetched in the build's container, which cannot see
    // the host's path: the build fails there, and nothing ran on the host.
    let req = file(
        dir.path(),
        "req-allowed.txt",
        &format!("tabulate\nevil @ file://{}\n", sdist.display()),
    );
    let out = biocage(engine)
        .args([
            "image",
            "build",
            "--offline",
            "--allow-source",
            "--tag",
            &tag,
        ])
        .arg("--wheels")
        .arg(wheels())
        .arg("--requirements")
        .arg(&req)
        .output()
        .expect("biocage runs");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(!marker.exists(), "the allowed source ran on the host");
}
