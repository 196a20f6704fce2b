//! Files: exposures (ownership included), temporary files, transfers and their attacks,
//! images from plots, session information.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use base64::Engine as _;
use biocage_core::{ExposureMode, SandboxRuntime};

use crate::harness::{config_builder, ok, run, session};

fn private_file(path: &Path, content: &str) {
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn my_uid() -> u32 {
    std::fs::metadata("/proc/self").unwrap().uid()
}

/// The reference's "File and Directory Integration", with host files private to the
/// host user (0600 files, 0700 folders, as temp-file helpers make them).
pub async fn seed_file_and_directory_integration(rt: &dyn SandboxRuntime) {
    let host = tempfile::tempdir().unwrap();
    let data = host.path().join("data.csv");
    private_file(&data, "a,b\n1,2\n3,4\n5,6\n");
    let settings = host.path().join("config.json");
    private_file(&settings, "{\"threshold\": 3}");
    let models = tempfile::tempdir().unwrap();
    private_file(&models.path().join("model.bin"), "weights");
    let output = tempfile::tempdir().unwrap();
    std::fs::write(output.path().join("old.txt"), "from before").unwrap();
    let config = config_builder(rt)
        .await
        .expose(&data, "/app/data/input.csv")
        .expose(&settings, "/app/config/settings.json")
        .expose(models.path(), "/app/models")
        .expose_rw(output.path(), "/app/output")
        .build()
        .unwrap();
    let s = rt.create_session(&config).await.unwrap();
    let r = run(
        s.as_ref(),
        r#"
    import pandas as pd
    import json
    import os

    # Read exposed files
    df = pd.read_csv('/app/data/input.csv')
    with open('/app/config/settings.json', 'r') as f:
        config = json.load(f)

    # List available models
    models = os.listdir('/app/models')
    print(f"Available models: {models}")

    # Process data and save results
    summary = df.describe()
    summary.to_csv('/app/output/analysis_results.csv')

    # Save processing log
    with open('/app/output/log.txt', 'w') as f:
        f.write(f"Processed {len(df)} rows with config: {config}")
    os.makedirs('/app/output/nested/deeper')
    open('/app/output/nested/deeper/x.txt', 'w').write('x')
    os.remove('/app/output/old.txt')
    os.symlink('/etc/passwd', '/app/output/escape')

    print(f"Processed {len(df)} rows successfully")
    "#,
    )
    .await;
    let out = ok(&r);
    assert!(out.contains("Available models: ['model.bin']"), "{out}");
    assert!(out.contains("Processed 3 rows successfully"), "{out}");
    // Read-only exposures really refuse writes, files and folders alike.
    let r = run(
        s.as_ref(),
        "import errno\nfor p in ['/app/data/input.csv', '/app/models/new', '/app/models/model.bin']:\n    try:\n        open(p, 'a').write('x')\n        print('WROTE', p)\n    except OSError as e:\n        print(errno.errorcode[e.errno])",
    )
    .await;
    let out = ok(&r);
    assert!(!out.contains("WROTE"), "{out}");
    assert_eq!(out.matches("EROFS").count(), 3, "{out}");
    // Writes land on the host after the run, owned by the host user.
    let log = output.path().join("log.txt");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "Processed 3 rows with config: {'threshold': 3}"
    );
    assert!(output.path().join("analysis_results.csv").is_file());
    assert_eq!(std::fs::metadata(&log).unwrap().uid(), my_uid());
    assert_eq!(
        std::fs::read_to_string(output.path().join("nested/deeper/x.txt")).unwrap(),
        "x"
    );
    assert!(!output.path().join("old.txt").exists(), "removals land too");
    assert!(
        std::fs::symlink_metadata(output.path().join("escape")).is_err(),
        "a link planted by sandbox code is not carried to the host"
    );
    s.close().await.unwrap();
    std::fs::remove_dir_all(output.path().join("nested"))
        .expect("the host user can remove what the sandbox wrote");
    assert_eq!(
        std::fs::metadata(&data).unwrap().mode() & 0o777,
        0o600,
        "host files untouched"
    );
}

/// The reference's "Temporary File Creation": the path is readable in the sandbox,
/// state survives, and nothing stays in the host temp dir.
pub async fn seed_temporary_file_creation(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    ok(&run(s.as_ref(), "kept = 'yes'").await);
    let csv = "name,age,city\nAlice,25,New York\nBob,30,San Francisco\nCharlie,35,Boston";
    let path = s.create_temp_file(csv.as_bytes(), ".csv").await.unwrap();
    assert!(path.ends_with(".csv"), "{path}");
    let r = run(
        s.as_ref(),
        &format!(
            "import pandas as pd\ndf = pd.read_csv('{path}')\nprint(f'Loaded {{len(df)}} rows')\navg_age = df['age'].mean()\nprint(f'Average age: {{avg_age:.1f}}', kept)"
        ),
    )
    .await;
    let out = ok(&r);
    assert!(out.contains("Loaded 3 rows"), "{out}");
    assert!(out.contains("Average age: 30.0 yes"), "{out}");
    assert_eq!(s.info().await.unwrap().temp_files, 1);
    s.close().await.unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("biocage-{}-", std::process::id()))
        })
        .filter(|e| e.path().join("x0").exists())
        .collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
}

/// The reference's "Multi-Step Data Analysis Workflow".
pub async fn seed_multi_step_workflow(rt: &dyn SandboxRuntime) {
    let host = tempfile::tempdir().unwrap();
    let data = host.path().join("dataset.csv");
    private_file(&data, "x,y\n1,2\n,3\n4,5\n6,\n7,8\n");
    let output = tempfile::tempdir().unwrap();
    let config = config_builder(rt)
        .await
        .memory("1g")
        .expose(&data, "/app/data/dataset.csv")
        .expose_rw(output.path(), "/app/output")
        .build()
        .unwrap();
    let s = rt.create_session(&config).await.unwrap();
    ok(&run(
        s.as_ref(),
        "import pandas as pd\nimport numpy as np\nimport matplotlib.pyplot as plt\ndf = pd.read_csv('/app/data/dataset.csv')\nprint(f'Dataset shape: {df.shape}')",
    )
    .await);
    ok(&run(
        s.as_ref(),
        "df_clean = df.dropna()\nwith open('/app/output/cleaning_report.txt', 'w') as f:\n    f.write(f'Original: {df.shape}\\nCleaned: {df_clean.shape}\\n')",
    )
    .await);
    assert_eq!(
        std::fs::read_to_string(output.path().join("cleaning_report.txt")).unwrap(),
        "Original: (5, 2)\nCleaned: (3, 2)\n",
        "written by step 2, on the host right after it"
    );
    let r = run(
        s.as_ref(),
        "summary = df_clean.describe()\nsummary.to_csv('/app/output/summary_statistics.csv')\nprint(f'Analysis completed for {len(df_clean)} rows')",
    )
    .await;
    assert_eq!(ok(&r), "Analysis completed for 3 rows\n");
    s.close().await.unwrap();
    let summary = std::fs::read_to_string(output.path().join("summary_statistics.csv")).unwrap();
    assert!(summary.starts_with(",x,y"), "{summary}");
}

/// Transfers: round trip; "..", paths outside the allowed areas, links planted by
/// sandbox code and sizes over the cap are refused, in both directions.
pub async fn transfers_refuse_attacks(rt: &dyn SandboxRuntime) {
    let config = config_builder(rt)
        .await
        .max_transfer_bytes(1 << 20)
        .build()
        .unwrap();
    let s = rt.create_session(&config).await.unwrap();
    let payload: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    s.write_file("/workspace/in/data.bin", &payload)
        .await
        .unwrap();
    let r = run(
        s.as_ref(),
        "print(len(open('/workspace/in/data.bin', 'rb').read()))",
    )
    .await;
    assert_eq!(ok(&r), "300000\n");
    assert_eq!(
        s.read_file("/workspace/in/data.bin").await.unwrap(),
        payload
    );
    ok(&run(
        s.as_ref(),
        "import os\nos.symlink('/etc/passwd', '/workspace/link')\nos.symlink('/etc', '/workspace/etcdir')\nopen('/tmp/big', 'wb').write(b'x' * (2 << 20))",
    )
    .await);
    for path in [
        "/workspace/link",
        "/workspace/etcdir/passwd",
        "/workspace/../etc/passwd",
        "/etc/passwd",
        "workspace/in/data.bin",
        "/proc/self/environ",
    ] {
        let err = s.read_file(path).await.expect_err(path).to_string();
        assert!(
            err.contains("symbolic link")
                || err.contains("..")
                || err.contains("outside")
                || err.contains("absolute"),
            "{path}: {err}"
        );
    }
    for path in [
        "/workspace/etcdir/evil",
        "/workspace/link",
        "/workspace/../tmp/x",
        "/usr/evil",
        "/etc/passwd",
    ] {
        let err = s.write_file(path, b"x").await.expect_err(path).to_string();
        assert!(
            err.contains("symbolic link") || err.contains("..") || err.contains("outside"),
            "{path}: {err}"
        );
    }
    // A FIFO planted by sandbox code cannot stall a transfer.
    ok(&run(s.as_ref(), "import os\nos.mkfifo('/workspace/fifo')").await);
    let t = std::time::Instant::now();
    let err = s
        .read_file("/workspace/fifo")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("regular file"), "{err}");
    let err = s
        .write_file("/workspace/fifo", b"x")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("regular file") || err.contains("No such device"),
        "{err}"
    );
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        t.elapsed()
    );
    let err = s.read_file("/tmp/big").await.unwrap_err().to_string();
    assert!(err.contains("cap"), "{err}");
    let err = s
        .write_file("/tmp/too-big", &vec![0u8; 2 << 20])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("cap"), "{err}");
    let r = run(
        s.as_ref(),
        "print(open('/etc/passwd').read().count('root'))",
    )
    .await;
    assert!(r.success, "the sandbox still works");
    s.close().await.unwrap();
}

fn png_size(b64: &str) -> (u32, u32) {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let reader = decoder.read_info().expect("a PNG that decodes");
    let info = reader.info();
    (info.width, info.height)
}

/// Figures made with matplotlib come back as PNGs (plt.show() or left open); off by switch.
pub async fn plots_return_images(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    let r = run(
        s.as_ref(),
        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [4, 1, 9])\nplt.show()\nfig2 = plt.figure(figsize=(3, 2))\nplt.bar(['a', 'b'], [1, 2])",
    )
    .await;
    ok(&r);
    assert_eq!(
        r.images.len(),
        2,
        "{:?}",
        r.images.iter().map(|i| &i.mime).collect::<Vec<_>>()
    );
    for img in &r.images {
        assert_eq!(img.mime, "image/png");
        let (w, h) = png_size(&img.data);
        assert!(w > 100 && h > 100, "{w}x{h}");
    }
    assert!(
        !r.stderr.contains("non-interactive"),
        "plt.show() is quiet: {}",
        r.stderr
    );
    let r = run(s.as_ref(), "print(len(plt.get_fignums()))").await;
    assert_eq!(ok(&r), "0\n", "captured figures are closed");
    assert!(r.images.is_empty());
    s.close().await.unwrap();
    let config = config_builder(rt)
        .await
        .capture_figures(false)
        .build()
        .unwrap();
    let s = rt.create_session(&config).await.unwrap();
    let r = run(
        s.as_ref(),
        "import matplotlib.pyplot as plt\nplt.plot([1, 2])",
    )
    .await;
    assert!(r.images.is_empty());
    s.close().await.unwrap();
}

/// Session information as the reference's get_container_info.
pub async fn info_describes_the_session(rt: &dyn SandboxRuntime) {
    let dir = tempfile::tempdir().unwrap();
    let config = config_builder(rt)
        .await
        .expose(dir.path(), "/data/in")
        .build()
        .unwrap();
    let s = rt.create_session(&config).await.unwrap();
    s.create_temp_file(b"x", ".txt").await.unwrap();
    let info = s.info().await.unwrap();
    assert_eq!(info.container_id.len(), 64);
    assert!(info.container_name.starts_with("biocage-"));
    assert!(info.is_running);
    assert_eq!(info.image, "biocage:latest");
    assert_eq!(info.exposed_paths.len(), 1);
    assert_eq!(info.exposed_paths[0].mode, ExposureMode::ReadOnly);
    assert_eq!(info.temp_files, 1);
    assert!(info.limits.iter().any(|l| l.name == "memory"));
    assert!(info.python_version.starts_with('3'));
    let other = rt.create_session(&config).await.unwrap();
    assert_ne!(
        other.info().await.unwrap().user,
        info.user,
        "each session has a uid of its own"
    );
    assert_ne!(
        info.user, "1000:1000",
        "never the image's user, a host account"
    );
    other.close().await.unwrap();
    s.close().await.unwrap();
}

/// A host disk that fills during copy-back leaves each host file whole: the old
/// version, or the new one, never a truncated mix; the result names what did not
/// arrive. (The host folder is a 1 MiB tmpfs of its own.)
pub async fn a_full_host_disk_never_truncates_a_file(rt: &dyn SandboxRuntime) {
    let dir = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(dir.path())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        mounted,
        "mounting a small tmpfs needs root (CI runs as root)"
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(dir.path().to_path_buf());
    let old = "the host's version\n".repeat(20_000); // 380 KB
    std::fs::write(dir.path().join("a.txt"), &old).unwrap();
    let config = config_builder(rt)
        .await
        .expose_rw(dir.path(), "/data/out")
        .build()
        .unwrap();
    let s = rt.create_session(&config).await.unwrap();
    // 800 KB does not fit beside the old 380 KB on a 1 MiB disk.
    let r = run(
        s.as_ref(),
        "open('/data/out/a.txt', 'w').write('sandbox\\n' * 100_000)",
    )
    .await;
    assert!(
        r.stderr.contains("a.txt") && r.stderr.contains("could not be copied back"),
        "the result names what did not arrive: {}",
        r.to_json()
    );
    let now = std::fs::read_to_string(dir.path().join("a.txt")).unwrap();
    assert!(now == old, "the host file is whole: {} bytes", now.len());
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "no temporary file is left: {left:?}");
    // Room again: the next run's copy-back brings the new version whole.
    ok(&run(s.as_ref(), "open('/data/out/a.txt', 'w').write('small\\n')").await);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("a.txt")).unwrap(),
        "small\n"
    );
    s.close().await.unwrap();
}

/// Host paths with ':' in them (as in a timestamped folder) are exposed as they are,
/// read-only and read-write.
pub async fn exposures_with_colons_in_their_paths(rt: &dyn SandboxRuntime) {
    let base = tempfile::tempdir().unwrap();
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ro = base.path().join("run:2026-12-07T10:00");
    let rw = base.path().join("out:a:b");
    for dir in [&ro, &rw] {
        std::fs::create_dir(dir).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(ro.join("in.txt"), "colon\n").unwrap();
    std::fs::set_permissions(ro.join("in.txt"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = config_builder(rt)
        .await
        .expose(&ro, "/data/in")
        .expose_rw(&rw, "/data/out")
        .build()
        .unwrap();
    let s = rt.create_session(&config).await.unwrap();
    let r = run(
        s.as_ref(),
        "print(open('/data/in/in.txt').read(), end='')\nopen('/data/out/o.txt', 'w').write('back')",
    )
    .await;
    assert_eq!(ok(&r), "colon\n");
    assert_eq!(std::fs::read_to_string(rw.join("o.txt")).unwrap(), "back");
    s.close().await.unwrap();
}
