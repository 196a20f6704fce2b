//! Containers: hardened, labelled, listed, removed on close, on drop and by gc.

use std::time::Duration;

use biocage_core::SandboxRuntime;

use crate::harness::{ok, run, session};

/// The sandbox is hardened as designed: no network, read-only root, no capabilities,
/// no-new-privileges, a non-root user, writable workspace and /tmp.
pub async fn hardened_by_default(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    let code = r#"
import ctypes, os, socket
print("uid", os.getuid())
caps = [l for l in open('/proc/self/status') if l.startswith(('CapEff', 'CapBnd'))]
print(''.join(caps), end='')
# From the kernel itself (gVisor's /proc/self/status has no NoNewPrivs line).
print('NoNewPrivs:\t%d' % ctypes.CDLL(None).prctl(39, 0, 0, 0, 0))
root = [l.split()[3] for l in open('/proc/self/mounts') if l.split()[1] == '/']
print('root mount', root[-1].split(',')[0])
try:
    open('/usr/evil', 'w')
    print('root writable')
except OSError as e:
    print('root', e.errno)
open('/tmp/t', 'w').write('x'); open('workspace_file', 'w').write('y')
print('cwd', os.getcwd())
print('ifaces', sorted(n for _, n in socket.if_nameindex()))
try:
    socket.create_connection(('1.1.1.1', 53), timeout=2)
    print('net open')
except OSError as e:
    print('net closed')
"#;
    let r = run(s.as_ref(), code).await;
    let out = ok(&r);
    let info = s.info().await.unwrap();
    let uid = info.user.split(':').next().unwrap();
    assert!(out.contains(&format!("uid {uid}\n")), "{out}");
    assert_ne!(uid, "0");
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    // The kernel answers EROFS; gVisor checks permissions first (EACCES, 13).
    assert!(
        out.contains("root 30") || out.contains("root 13"),
        "read-only root refuses the write: {out}"
    );
    assert!(out.contains("root mount ro\n"), "{out}");
    assert!(out.contains("cwd /workspace"), "{out}");
    assert!(out.contains("ifaces ['lo']"), "{out}");
    assert!(out.contains("net closed"), "{out}");
    s.close().await.unwrap();
}

/// close() removes the container; the sandbox is listed by label while it lives.
pub async fn close_removes_container(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    let info = s.info().await.unwrap();
    assert!(info.is_running);
    assert!(rt.name().starts_with(&info.runtime), "{}", info.runtime);
    let listed = rt.list_sandboxes().await.unwrap();
    assert!(listed
        .iter()
        .any(|l| l.container_id == info.container_id && l.session_id == s.id()));
    s.close().await.unwrap();
    let listed = rt.list_sandboxes().await.unwrap();
    assert!(
        !listed.iter().any(|l| l.container_id == info.container_id),
        "still there after close"
    );
}

/// A session dropped without close is still cleaned up.
pub async fn drop_cleans_up(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    let id = s.info().await.unwrap().container_id;
    drop(s);
    wait_gone(rt, &id, "after its session was dropped").await;
}

/// restart() gives a fresh interpreter and kills what the old one left running.
pub async fn restart_is_fresh(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    ok(&run(
        s.as_ref(),
        "import subprocess\nx = 1\np = subprocess.Popen(['sleep', '300'])\nprint(p.pid)",
    )
    .await);
    s.restart().await.unwrap();
    let r = run(s.as_ref(), "import os\nprint('x' in dir())\nprint([p for p in os.listdir('/proc') if p.isdigit() and open(f'/proc/{p}/cmdline').read().startswith('sleep')])").await;
    let out = ok(&r);
    assert_eq!(
        out, "False\n[]\n",
        "fresh namespace, and the old sleep is gone"
    );
    assert!(!r.state_lost, "an asked-for restart is not a loss");
    s.close().await.unwrap();
}

/// Managed sandboxes can be listed and removed by id.
pub async fn remove_by_id(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    let id = s.info().await.unwrap().container_id;
    rt.remove_sandbox(&id).await.unwrap();
    assert!(!rt
        .list_sandboxes()
        .await
        .unwrap()
        .iter()
        .any(|l| l.container_id == id));
    // The next request says the sandbox is gone (typed, state lost); the one after
    // goes on in a fresh sandbox.
    match s.run("print(1)").await {
        Err(biocage_core::Error::SandboxGone { container }) => {
            assert!(!container.is_empty());
            let r = s.run("print(1)").await.unwrap();
            assert_eq!(ok(&r), "1\n");
            assert!(r.state_lost, "{}", r.to_json());
            assert_ne!(s.info().await.unwrap().container_id, id);
        }
        other => panic!("a run in a removed sandbox: {other:?}"),
    }
    drop(s);
}

/// The caller's task is cancelled mid-run: the dropped session's container goes away.
pub async fn cancelled_caller_leaves_nothing(rt: &dyn SandboxRuntime) {
    let config = crate::harness::config(rt).await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let s = rt.create_session(&config).await.unwrap();
    let task = tokio::spawn(async move {
        let id = s.info().await.unwrap().container_id;
        let _ = tx.send(id);
        let _ = s.run("import time\ntime.sleep(600)").await;
    });
    let id = rx.await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    task.abort();
    let _ = task.await;
    wait_gone(rt, &id, "after its caller's task was cancelled").await;
}

async fn wait_gone(rt: &dyn SandboxRuntime, id: &str, when: &str) {
    for _ in 0..100 {
        if !rt
            .list_sandboxes()
            .await
            .unwrap()
            .iter()
            .any(|l| l.container_id == id)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("container {id} still there 20 s {when}");
}

/// The host process is killed mid-run: its sandbox is gone once the next front end
/// starts and collects orphans, and, with nobody collecting, by itself through the agent's orphan watchdog.
pub async fn killed_owner_leaves_nothing(rt: &dyn SandboxRuntime, helper: &str) {
    let listed = |list: Vec<biocage_core::SandboxSummary>, id: &str| {
        list.iter().any(|l| l.container_id == id)
    };
    let id = spawn_and_kill(helper, rt.name()).await;
    assert!(
        listed(rt.list_sandboxes().await.unwrap(), &id),
        "the killed helper's sandbox exists until something collects it"
    );
    // What the front ends (CLI, Python package, MCP server) do when they start.
    let restarted = crate::harness::connect(rt.name()).await.unwrap();
    biocage_core::reap_orphans(restarted.as_ref()).await;
    assert!(
        !listed(restarted.list_sandboxes().await.unwrap(), &id),
        "collecting orphans at the next start removes it"
    );
    let id = spawn_and_kill(helper, rt.name()).await;
    wait_gone(
        rt,
        &id,
        "after its owner was killed, with nobody collecting",
    )
    .await;
}

/// Starts the helper process, waits for its container id, kills it with SIGKILL.
async fn spawn_and_kill(helper: &str, engine: &str) -> String {
    use std::io::BufRead;
    let mut child = std::process::Command::new(helper)
        .arg(engine)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("helper process");
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.starts_with("BIOCAGE-CONTAINER "))
    })
    .await
    .unwrap()
    .expect("the helper reports its container");
    tokio::time::sleep(Duration::from_millis(500)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    line.trim_start_matches("BIOCAGE-CONTAINER ").to_string()
}

/// Orphaned processes are reaped: no zombie stays behind.
pub async fn zombies_are_reaped(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    let r = run(
        s.as_ref(),
        "import os, time\nfor _ in range(20):\n    if os.fork() == 0:\n        if os.fork() == 0:\n            os._exit(0)\n        os._exit(0)\n    else:\n        os.wait()\ntime.sleep(0.5)",
    )
    .await;
    ok(&r);
    let r = run(
        s.as_ref(),
        "import os\nz = [p for p in os.listdir('/proc') if p.isdigit() and open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[0] == 'Z']\nprint(len(z))",
    )
    .await;
    assert_eq!(
        ok(&r),
        "0\n",
        "orphaned grandchildren are reaped by the agent's init"
    );
    s.close().await.unwrap();
}
