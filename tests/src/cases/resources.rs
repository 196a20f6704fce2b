//! Resource exhaustion: cpu, disks, file descriptors and inodes, output floods,
//! daemons left behind. Each leaves the session usable.

use std::time::{Duration, Instant};

use biocage_core::SandboxRuntime;

use crate::harness::{caps, config_builder, note_capability, ok, run, run_for, session};

/// CPU spin in several processes: the cpu limit holds (cpu time / wall time), and
/// another session's trivial run stays fast meanwhile.
pub async fn cpu_spin_is_bounded(rt: &dyn SandboxRuntime) {
    let config = config_builder(rt).await.cpus(0.5).build().unwrap();
    let hog = rt.create_session(&config).await.unwrap();
    let other = session(rt).await;
    let spin = r#"
import os, time, subprocess
start = time.time()
ps = [subprocess.Popen(['python3', '-c', 'import time\nt = time.time()\nwhile time.time() - t < 3: pass']) for _ in range(4)]
for p in ps:
    p.wait()
wall = time.time() - start
t = os.times()
print(f'{(t.children_user + t.children_system) / wall:.3f}')
"#;
    let spinning = async { run_for(hog.as_ref(), spin, 60.0).await };
    let probing = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut times = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            ok(&run(other.as_ref(), "pass").await);
            times.push(t.elapsed());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        times.sort();
        times[times.len() / 2]
    };
    let (r, median) = tokio::join!(spinning, probing);
    let ratio: f64 = ok(&r).trim().parse().unwrap();
    eprintln!("{}: 4 spinning processes used {ratio:.2} cores with a 0.5 cpu limit; other session's median run {median:?}", rt.name());
    let cpu = hog.info().await.unwrap().limits;
    let held = cpu
        .iter()
        .any(|l| l.name == "cpu" && l.enforcement == biocage_core::Enforcement::Engine);
    if held {
        assert!(
            ratio < 0.5 * 1.3,
            "cpu limit 0.5 not held: {ratio:.2} cores"
        );
    } else {
        note_capability(
            rt.name(),
            "cpu_spin_is_bounded",
            &format!("cpu unenforced: 4 spinning processes used {ratio:.2} cores with a 0.5 limit"),
        );
    }
    assert!(
        median < Duration::from_millis(200),
        "a neighbour's run got slow: {median:?}"
    );
    hog.close().await.unwrap();
    other.close().await.unwrap();
}

/// Filling /tmp, the workspace and /dev/shm ends in ENOSPC at the configured size; the
/// host's disk is untouched; the session goes on.
pub async fn disks_fill_to_their_size(rt: &dyn SandboxRuntime) {
    let mb = 1u64 << 20;
    let config = config_builder(rt)
        .await
        .tmp_bytes(24 * mb)
        .workspace_bytes(16 * mb)
        .build()
        .unwrap();
    let s = rt.create_session(&config).await.unwrap();
    let host_free = || fs_free("/");
    let before = host_free();
    let r = run_for(
        s.as_ref(),
        r#"
import errno, os
chunk = b'x' * (1 << 20)
for d in ['/tmp', '/workspace', '/dev/shm']:
    n = 0
    try:
        with open(d + '/fill', 'wb') as f:
            while n < 2048:
                f.write(chunk)
                f.flush()
                n += 1
    except OSError as e:
        print(d, errno.errorcode[e.errno], n)
    else:
        print(d, 'NO LIMIT', n)
"#,
        60.0,
    )
    .await;
    let out = ok(&r).to_string();
    let filled = |d: &str| -> u64 {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{d} ")))
            .unwrap();
        assert!(line.contains("ENOSPC"), "{line}");
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!((22..=24).contains(&filled("/tmp")), "{out}");
    assert!((14..=16).contains(&filled("/workspace")), "{out}");
    assert!((62..=64).contains(&filled("/dev/shm")), "{out}");
    let after = host_free();
    assert!(
        before.abs_diff(after) < 64 * mb,
        "host disk changed by {} MiB",
        before.abs_diff(after) / mb
    );
    let r = run(s.as_ref(), "import os\nfor d in ['/tmp', '/workspace', '/dev/shm']:\n    os.remove(d + '/fill')\nopen('/tmp/ok', 'w').write('fine')\nprint(open('/tmp/ok').read())").await;
    assert_eq!(ok(&r), "fine\n");
    s.close().await.unwrap();
}

fn fs_free(path: &str) -> u64 {
    let out = std::process::Command::new("df")
        .args(["-B1", "--output=avail", path])
        .output()
        .expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0)
}

/// Exhausting file descriptors and inodes gives clean errors; the supervisor answers.
pub async fn descriptors_and_inodes_run_out_cleanly(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    let r = run_for(
        s.as_ref(),
        "import errno\nheld = []\ntry:\n    while True:\n        held.append(open('/dev/null'))\nexcept OSError as e:\n    print('fds', errno.errorcode[e.errno], len(held))",
        30.0,
    )
    .await;
    let out = ok(&r).to_string();
    assert!(out.starts_with("fds EMFILE"), "{out}");
    let r = run(s.as_ref(), "print('still here', len(held))").await;
    assert!(
        ok(&r).starts_with("still here"),
        "the supervisor answers while the fds are held"
    );
    ok(&run(s.as_ref(), "for f in held: f.close()\nheld = None").await);
    let inode_limit = caps(rt).await.tmpfs_inode_limit;
    // With an inode limit the flood ends in ENOSPC; without one it is cut at 200,000
    // files here (the run's time limit would end it otherwise).
    let most = if inode_limit { 2_000_000 } else { 200_000 };
    let r = run_for(
        s.as_ref(),
        &format!("import errno, os\nos.mkdir('/tmp/many')\nn = 0\ntry:\n    while n < {most}:\n        open(f'/tmp/many/{{n}}', 'w').close()\n        n += 1\n    print('files created', n)\nexcept OSError as e:\n    print('files', errno.errorcode[e.errno], n)"),
        120.0,
    )
    .await;
    let out = ok(&r).to_string();
    if inode_limit {
        assert!(
            out.starts_with("files ENOSPC 655"),
            "the inode limit ends the flood: {out}"
        );
    } else {
        note_capability(
            rt.name(),
            "descriptors_and_inodes_run_out_cleanly",
            &format!("no tmpfs inode limit: {}", out.trim()),
        );
        assert!(out.starts_with("files created 200000"), "{out}");
    }
    let r = run(s.as_ref(), "print('answering')").await;
    assert_eq!(
        ok(&r),
        "answering\n",
        "the supervisor answers after the flood"
    );
    let r = run_for(
        s.as_ref(),
        "import shutil\nshutil.rmtree('/tmp/many')\nprint('cleaned')",
        120.0,
    )
    .await;
    assert_eq!(ok(&r), "cleaned\n");
    s.close().await.unwrap();
}

fn host_rss_peak_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Floods: 100 MB of stdout, a huge line without newline, a stderr flood, binary bytes:
/// capped with flags, bytes replaced safely, host memory bounded.
pub async fn output_floods_are_capped(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    let before = host_rss_peak_kib();
    let r = run_for(
        s.as_ref(),
        "import os, sys\nchunk = b'y' * (1 << 20)\nfor _ in range(100):\n    os.write(1, chunk)\nsys.stdout.write('z' * (20 << 20))\nfor _ in range(30):\n    os.write(2, os.urandom(1 << 20))\nprint('done')",
        120.0,
    )
    .await;
    assert!(
        r.success,
        "{}",
        r.error
            .as_ref()
            .map(|e| e.message.clone())
            .unwrap_or_default()
    );
    assert!(r.stdout_truncated && r.stderr_truncated);
    assert_eq!(r.stdout.len(), 1 << 20, "stdout kept to the 1 MiB cap");
    assert!(r.stdout.bytes().all(|b| b == b'y'));
    assert!(r.stderr.chars().count() <= 1 << 20);
    let grown_mib = host_rss_peak_kib().saturating_sub(before) / 1024;
    eprintln!(
        "{}: host peak memory grew {grown_mib} MiB over a 150 MB flood",
        rt.name()
    );
    assert!(grown_mib < 100, "host memory grew {grown_mib} MiB");
    let r = run(s.as_ref(), "print('after')").await;
    assert_eq!(ok(&r), "after\n");
    s.close().await.unwrap();
}

/// A double-forked, setsid daemon outlives its run but not the interpreter's replacement.
pub async fn daemons_die_with_the_interpreter(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    let daemon = r#"
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        while True:
            with open('/tmp/heartbeat.new', 'w') as f:
                f.write(str(time.time()))
            os.replace('/tmp/heartbeat.new', '/tmp/heartbeat')
            time.sleep(0.1)
    os._exit(0)
time.sleep(0.3)
print('started')
"#;
    assert_eq!(ok(&run(s.as_ref(), daemon).await), "started\n");
    let beat = "import time\nt = float(open('/tmp/heartbeat').read())\ntime.sleep(0.5)\nprint(float(open('/tmp/heartbeat').read()) > t)";
    assert_eq!(
        ok(&run(s.as_ref(), beat).await),
        "True\n",
        "the daemon lives on after its run"
    );
    s.restart().await.unwrap();
    assert_eq!(
        ok(&run(s.as_ref(), beat).await),
        "False\n",
        "replacing the interpreter killed it"
    );
    s.close().await.unwrap();
}
