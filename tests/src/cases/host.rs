//! What sandbox code could do to the host through exposures, uids and shared kernel
//! state. Each case is the attack itself.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use biocage_core::SandboxRuntime;

use crate::harness::{config_builder, ok, run};

fn host_accounts() -> Vec<u32> {
    std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(':').nth(2)?.parse().ok())
        .collect()
}

/// The host uid of a container uid on `rt` (rootless engines map through subuids).
async fn host_uid(rt: &dyn SandboxRuntime, uid: u32) -> u32 {
    let caps = rt.capabilities().await.unwrap();
    biocage_core::limits::map_id(&caps.uid_map, uid).unwrap()
}

/// A read-write exposure cannot plant setuid binaries or links on the host, fill its
/// disk (a 4 GiB sparse file, a flood past the cap), or leave files other users can read.
pub async fn rw_exposures_cannot_reach_the_host(rt: &dyn SandboxRuntime) {
    let out = tempfile::tempdir().unwrap();
    std::fs::write(out.path().join("old.txt"), "from the host").unwrap();
    let config = config_builder(rt)
        .await
        .expose_rw(out.path(), "/data/out")
        .rw_exposure_bytes(32 << 20)
        .build()
        .unwrap();
    let s = rt.create_session(&config).await.unwrap();
    let r = run(
        s.as_ref(),
        r#"
import os, shutil
print(open('/data/out/old.txt').read())
shutil.copy('/usr/bin/python3', '/data/out/py')
os.chmod('/data/out/py', 0o6755)
os.symlink('/etc/passwd', '/data/out/link')
with open('/data/out/sparse', 'wb') as f:
    f.truncate(4 << 30)
try:
    with open('/data/out/flood', 'wb') as f:
        for _ in range(300):
            f.write(b'x' * (1 << 20))
    print('flood fit')
except OSError as e:
    print('flood stopped', e.errno)
print([l.split()[4:5] + l.split()[-3:-2] for l in open('/proc/self/mountinfo') if ' /data/out ' in l])
"#,
    )
    .await;
    let text = ok(&r).to_string();
    assert!(text.contains("from the host"), "{text}");
    assert!(
        text.contains("flood stopped 28"),
        "ENOSPC inside the sandbox: {text}"
    );
    assert!(
        text.contains("tmpfs"),
        "the exposure is a tmpfs in the sandbox: {text}"
    );
    let py = std::fs::metadata(out.path().join("py")).unwrap();
    assert_eq!(py.mode() & 0o7000, 0, "no setuid or setgid on the host");
    assert_eq!(
        py.mode() & 0o077,
        0,
        "no other host user can read or run it"
    );
    assert_eq!(py.uid(), std::fs::metadata("/proc/self").unwrap().uid());
    assert!(std::fs::symlink_metadata(out.path().join("link")).is_err());
    let used: u64 = std::fs::read_dir(out.path())
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().blocks() * 512)
        .sum();
    assert!(
        used < 80 << 20,
        "host disk used by the exposure: {used} bytes"
    );
    if let Ok(m) = std::fs::metadata(out.path().join("sparse")) {
        assert!(m.blocks() * 512 < 1 << 20, "a sparse file stays sparse");
    } else {
        assert!(
            r.stderr.contains("apparent size"),
            "an uncopied file is reported: {}",
            r.stderr
        );
    }
    s.close().await.unwrap();
    assert_eq!(
        std::fs::read_to_string(out.path().join("old.txt")).unwrap(),
        "from the host"
    );
}

/// Many folders and deep nesting in a read-write exposure: later runs stay fast, what
/// is too deep is reported instead of copied, and close leaves nothing behind.
pub async fn rw_exposure_shapes_cost_little(rt: &dyn SandboxRuntime) {
    let out = tempfile::tempdir().unwrap();
    let config = config_builder(rt)
        .await
        .expose_rw(out.path(), "/data/out")
        .build()
        .unwrap();
    let s = rt.create_session(&config).await.unwrap();
    let r = run(
        s.as_ref(),
        r#"
import os
os.chdir('/data/out')
for i in range(1500):
    os.mkdir('n')
    os.chdir('n')
os.chdir('/workspace')
"#,
    )
    .await;
    ok(&r);
    assert!(
        r.stderr.contains("deeper than 64"),
        "deep nesting is reported: {}",
        r.stderr
    );
    let r = run(
        s.as_ref(),
        r#"
import os
made = 0
try:
    for i in range(20000):
        os.mkdir('/data/out/d%05d' % i)
        made += 1
except OSError as e:
    print('stopped', e.errno)
print('made', made)
"#,
    )
    .await;
    let made = ok(&r).to_string();
    assert!(
        made.contains("stopped 28") || r.stderr.contains("file-count cap"),
        "the file cap holds, inside (ENOSPC) or at copy-back: {made} {}",
        r.stderr
    );
    assert!(r.stderr.len() < 4096, "notes are short: {}", r.stderr.len());
    let started = Instant::now();
    for _ in 0..3 {
        ok(&run(s.as_ref(), "1").await);
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "three trivial runs after the flood took {took:?}"
    );
    s.close().await.unwrap();
    let depth = walkdepth(out.path());
    assert!(depth <= 65, "copied back at most 64 levels: {depth}");
}

fn walkdepth(p: &std::path::Path) -> usize {
    let mut depth = 0;
    let mut cur = p.to_path_buf();
    while cur.join("n").is_dir() {
        cur = cur.join("n");
        depth += 1;
    }
    depth
}

/// The sandbox's uid is no host account, distinct for every live session, and staged
/// private files are readable by that uid alone.
pub async fn sandbox_uids_are_private(rt: &dyn SandboxRuntime) {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.txt");
    // Unique to this case: other configurations run in parallel in this process.
    let mark = format!("s3cret-{}", dir.path().display());
    std::fs::write(&secret, &mark).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = config_builder(rt)
        .await
        .expose(&secret, "/data/secret.txt")
        .env("API_KEY", "k-123")
        .build()
        .unwrap();
    let mut sessions = Vec::new();
    for _ in 0..6 {
        sessions.push(rt.create_session(&config).await.unwrap());
    }
    let accounts = host_accounts();
    let mut uids = Vec::new();
    for s in &sessions {
        let r = run(
            s.as_ref(),
            "import os\nprint(os.getuid(), open('/data/secret.txt').read())",
        )
        .await;
        let out = ok(&r).to_string();
        let uid: u32 = out.split_whitespace().next().unwrap().parse().unwrap();
        assert!(out.contains("s3cret"), "{out}");
        let host = host_uid(rt, uid).await;
        assert!(
            !accounts.contains(&host),
            "host uid {host} is a host account"
        );
        uids.push(host);
    }
    // The staged copies belong to those uids alone.
    let base = biocage_core::staging::runtime_dir().join("staging");
    let mine = format!("biocage-{}-", std::process::id());
    let mut staged = 0;
    for entry in std::fs::read_dir(&base).unwrap().flatten() {
        let copy = entry.path().join("x0");
        if !entry.file_name().to_string_lossy().starts_with(&mine) || !copy.exists() {
            continue;
        }
        let m = std::fs::metadata(&copy).unwrap();
        if std::fs::read_to_string(&copy).ok().as_deref() == Some(mark.as_str()) {
            assert!(uids.contains(&m.uid()), "staged copy owned by {}", m.uid());
            assert_eq!(m.mode() & 0o077, 0, "no group or other access");
            staged += 1;
        }
    }
    assert!(
        staged >= uids.len(),
        "{staged} staged copies found in {}",
        base.display()
    );
    let mut distinct = uids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), uids.len(), "uids: {uids:?}");
    for s in sessions {
        s.close().await.unwrap();
    }
}

/// No view of the host: a private cgroup namespace (no other container's id, no host
/// path), and name-service files generated for the sandbox.
pub async fn no_view_of_the_host(rt: &dyn SandboxRuntime) {
    let config = config_builder(rt).await.build().unwrap();
    let other = rt.create_session(&config).await.unwrap();
    let other_id = other.info().await.unwrap().container_id;
    let s = rt.create_session(&config).await.unwrap();
    let r = run(
        s.as_ref(),
        r#"
import os
print('cgroup', sorted(set(l.strip().split(':', 2)[2] for l in open('/proc/self/cgroup'))))
seen = []
for top, dirs, files in os.walk('/sys/fs/cgroup'):
    seen.extend(dirs)
    if len(seen) > 5000:
        break
print('dirs', ' '.join(seen))
print('hosts', repr(open('/etc/hosts').read()))
print('resolv', repr(open('/etc/resolv.conf').read()))
"#,
    )
    .await;
    let out = ok(&r).to_string();
    // gVisor's kernel shows no cgroup at all (nothing of the host's either).
    let gvisor = s.info().await.unwrap().isolation == biocage_core::Isolation::Gvisor;
    assert!(
        out.contains("cgroup ['/']") || (gvisor && out.contains("cgroup []")),
        "{out}"
    );
    assert!(
        !out.contains(&other_id[..12]),
        "another sandbox is visible: {out}"
    );
    let dirs = out.lines().find(|l| l.starts_with("dirs")).unwrap();
    assert!(
        !dirs.split_whitespace().any(|d| d == "docker"
            || d == "libpod_parent"
            || (d.len() == 64 && d.chars().all(|c| c.is_ascii_hexdigit()))),
        "other containers' cgroups are visible: {dirs}"
    );
    let hosts = out.lines().find(|l| l.starts_with("hosts")).unwrap();
    assert!(hosts.contains("localhost"), "{hosts}");
    assert!(!hosts.contains(&biocage_core::spec::host_name()), "{hosts}");
    let resolv = out.lines().find(|l| l.starts_with("resolv")).unwrap();
    assert!(!resolv.contains("nameserver"), "{resolv}");
    s.close().await.unwrap();
    other.close().await.unwrap();
}

/// Host-wide and per-user kernel counters: pseudo-terminals (one quota for the whole
/// host) are not available in a sandbox; inotify instances used up in one session
/// leave another's untouched, or (rootless engines, which charge them to their own
/// host user) are refused.
pub async fn kernel_counters_are_not_shared(rt: &dyn SandboxRuntime) {
    let config = config_builder(rt).await.build().unwrap();
    let a = rt.create_session(&config).await.unwrap();
    let b = rt.create_session(&config).await.unwrap();
    let ptys_before = std::fs::read_to_string("/proc/sys/kernel/pty/nr").unwrap();
    let r = run(
        a.as_ref(),
        r#"
import os, ctypes
opened = 0
for _ in range(50):
    try:
        os.openpty()
        opened += 1
    except OSError:
        pass
libc = ctypes.CDLL(None, use_errno=True)
held = []
for _ in range(200):
    fd = libc.inotify_init1(0)
    if fd < 0:
        break
    held.append(fd)
print('ptys', opened, 'inotify', len(held))
"#,
    )
    .await;
    let out = ok(&r).to_string();
    let info = a.info().await.unwrap();
    // Under gVisor, pseudo-terminals and inotify are its own kernel's: the host's
    // counters below are what must not move.
    let own_kernel = info.isolation == biocage_core::Isolation::Gvisor;
    assert!(own_kernel || out.contains("ptys 0 "), "{out}");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/pty/nr").unwrap(),
        ptys_before,
        "the host-wide pty count did not move"
    );
    let held: usize = out.split_whitespace().last().unwrap().parse().unwrap();
    let inotify = info.limits.iter().find(|l| l.name == "inotify").unwrap();
    let r = run(
        b.as_ref(),
        "import ctypes\nprint(ctypes.CDLL(None, use_errno=True).inotify_init1(0) >= 0)",
    )
    .await;
    if inotify.value == "none" {
        assert_eq!(held, 0, "refused on this engine: {out}");
        assert_eq!(ok(&r).trim(), "False");
    } else {
        assert!(own_kernel || held <= 128, "{out}");
        assert_eq!(ok(&r).trim(), "True", "the other session still has its own");
    }
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// Shared memory cannot get past the memory limit: a 2 GiB shared mapping, memfd and
/// SysV segments are refused or end as out of memory, and the session lives on.
pub async fn shared_memory_is_bounded(rt: &dyn SandboxRuntime) {
    let config = config_builder(rt).await.memory("256m").build().unwrap();
    let s = rt.create_session(&config).await.unwrap();
    let r = run(
        s.as_ref(),
        r#"
import mmap, os, ctypes
def attempt(name, fn):
    try:
        fn()
        print(name, 'GOT')
    except (OSError, MemoryError, ValueError) as e:
        print(name, 'refused', type(e).__name__)
def shared():
    m = mmap.mmap(-1, 2 << 30, flags=mmap.MAP_SHARED)
    for i in range(0, 2 << 30, 4096):
        m[i] = 1
def memfd():
    fd = os.memfd_create('x')
    for _ in range(1024):
        os.write(fd, b'x' * (1 << 20))
def sysv():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    shmid = libc.shmget(0, 1 << 30, 0o600 | 0o1000)
    if shmid < 0:
        raise OSError(ctypes.get_errno(), 'shmget')
    addr = libc.shmat(shmid, None, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), 'shmat')
    ctypes.memset(addr, 1, 1 << 30)
attempt('sysv', sysv)
attempt('memfd', memfd)
attempt('shared', shared)
"#,
    )
    .await;
    // Either every attempt is refused in the interpreter (rlimits, seccomp, IPC
    // sysctls), or the cgroup kills the interpreter as out of memory.
    if r.success {
        assert!(!r.stdout.contains("GOT"), "{}", r.to_json());
    } else {
        assert_eq!(
            r.error_kind(),
            Some(biocage_core::ErrorKind::Oom),
            "{}",
            r.to_json()
        );
        assert!(r.stdout.contains("sysv refused"), "{}", r.to_json());
    }
    ok(&run(s.as_ref(), "print('alive')").await);
    s.close().await.unwrap();
}

/// Whoever can write in an exposed folder swaps its files and folders for links to a
/// private host file, in a loop, while sessions fill their read-write copy and stage
/// their read-only one: the host (root) never copies the link's target in. A session
/// either starts without it or refuses to start, saying what changed.
pub async fn swapped_links_never_reach_the_sandbox(rt: &dyn SandboxRuntime) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_dir.path().join("secret");
    std::fs::write(&secret, "HOST-SECRET-CANARY\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    // A private folder whose names match the exposed `sub` (as ~/.ssh would for a
    // link named after it).
    for i in 0..40 {
        let g = secret_dir.path().join(format!("g{i}"));
        std::fs::write(&g, "HOST-SECRET-CANARY\n").unwrap();
        std::fs::set_permissions(&g, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let shared = tempfile::tempdir().unwrap();
    let private = tempfile::tempdir().unwrap();
    // 0700: the read-only exposure is staged (copied), not bound.
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    for dir in [shared.path(), private.path()] {
        std::fs::create_dir(dir.join("sub")).unwrap();
        for i in 0..40 {
            std::fs::write(dir.join(format!("f{i}")), "plain\n").unwrap();
            std::fs::write(dir.join("sub").join(format!("g{i}")), "plain\n").unwrap();
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, dirs) = (
            stop.clone(),
            vec![shared.path().to_path_buf(), private.path().to_path_buf()],
        );
        let (secret, secret_dir) = (secret.clone(), secret_dir.path().to_path_buf());
        std::thread::spawn(move || {
            // Each name is atomically exchanged with a link to the secret and back
            // (renameat2 RENAME_EXCHANGE), so it always exists: a file or a link.
            let exchange = |a: &std::path::Path, b: &std::path::Path| {
                use std::os::unix::ffi::OsStrExt;
                let a = std::ffi::CString::new(a.as_os_str().as_bytes()).unwrap();
                let b = std::ffi::CString::new(b.as_os_str().as_bytes()).unwrap();
                // SAFETY: two NUL-terminated paths.
                unsafe {
                    libc::renameat2(
                        libc::AT_FDCWD,
                        a.as_ptr(),
                        libc::AT_FDCWD,
                        b.as_ptr(),
                        libc::RENAME_EXCHANGE,
                    )
                }
            };
            let mut pairs = Vec::new();
            for dir in &dirs {
                for i in 0..40 {
                    pairs.push((
                        dir.join(format!("f{i}")),
                        dir.join(format!("f{i}.lnk")),
                        &secret,
                    ));
                }
                pairs.push((dir.join("sub"), dir.join("sub.lnk"), &secret_dir));
            }
            for (_, link, target) in &pairs {
                std::os::unix::fs::symlink(target, link).unwrap();
            }
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for (name, link, _) in &pairs {
                    if exchange(name, link) == 0 {
                        std::thread::yield_now();
                        exchange(name, link);
                        swaps += 1;
                    }
                }
            }
            swaps
        })
    };
    let (mut started, mut refused) = (0, 0);
    for _ in 0..6 {
        let config = config_builder(rt)
            .await
            .expose_rw(shared.path(), "/data/rw")
            .expose(private.path(), "/data/ro")
            .build()
            .unwrap();
        let s = match rt.create_session(&config).await {
            Ok(s) => s,
            Err(e) => {
                let text = e.to_string();
                assert!(!text.contains("CANARY"), "{text}");
                assert!(
                    text.contains("changed while it was being copied"),
                    "a refused start must say what changed: {text}"
                );
                refused += 1;
                continue;
            }
        };
        let r = run(
            s.as_ref(),
            r#"
import os
seen = []
for top in ('/data/rw', '/data/ro'):
    for root, dirs, files in os.walk(top):
        for name in files:
            with open(os.path.join(root, name), errors='replace') as f:
                if 'CANARY' in f.read():
                    seen.append(os.path.join(root, name))
print('leaked', seen)
"#,
        )
        .await;
        let text = ok(&r).to_string();
        assert!(
            text.contains("leaked []"),
            "the host copied a link's target in: {text}"
        );
        s.close().await.unwrap();
        started += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(swaps > 100, "the swapper ran ({swaps} swaps)");
    eprintln!("swapped-links: {started} sessions started clean, {refused} refused, {swaps} swaps");
}

/// A folder that was empty at one copy-back and gains a file later (also after its
/// times were set back) has the file copied back: the scan's shortcut for untouched
/// empty folders never hides a change.
pub async fn files_in_once_empty_folders_are_copied_back(rt: &dyn SandboxRuntime) {
    let out = tempfile::tempdir().unwrap();
    let config = config_builder(rt)
        .await
        .expose_rw(out.path(), "/data/out")
        .build()
        .unwrap();
    let s = rt.create_session(&config).await.unwrap();
    ok(&run(
        s.as_ref(),
        "import os\nos.makedirs('/data/out/e/deeper')\nos.mkdir('/data/out/f')",
    )
    .await);
    ok(&run(s.as_ref(), "1").await);
    ok(&run(
        s.as_ref(),
        "import os\nst = os.stat('/data/out/f')\nopen('/data/out/f/new.txt', 'w').write('in f')\nos.utime('/data/out/f', ns=(st.st_atime_ns, st.st_mtime_ns))\nopen('/data/out/e/deeper/x.txt', 'w').write('deep')",
    )
    .await);
    assert_eq!(
        std::fs::read_to_string(out.path().join("f/new.txt")).unwrap(),
        "in f"
    );
    assert_eq!(
        std::fs::read_to_string(out.path().join("e/deeper/x.txt")).unwrap(),
        "deep"
    );
    s.close().await.unwrap();
}
