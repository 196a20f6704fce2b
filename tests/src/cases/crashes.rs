//! A dying interpreter is reported, replaced, and the session goes on.

use biocage_core::{ErrorKind, SandboxRuntime};

use crate::harness::{config_builder, ok, run, session};

/// os._exit, a segfault, a signal: crashed, state lost, next run works in a fresh
/// interpreter. (sys.exit ends the run only: see fidelity::sys_exit_ends_the_run.)
pub async fn worker_death_is_survived(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    for (code, name, exit) in [
        (
            // The status the program chose, as python's own.
            "import os\nprint('bye', flush=True)\nos._exit(3)",
            "SystemExit",
            3,
        ),
        ("import ctypes\nctypes.string_at(0)", "SIGSEGV", 137),
        (
            "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
            "SIGKILL",
            137,
        ),
    ] {
        ok(&run(s.as_ref(), "kept = 1").await);
        let r = run(s.as_ref(), code).await;
        assert!(!r.success);
        assert_eq!(
            r.error_kind(),
            Some(ErrorKind::Crashed),
            "{code}: {}",
            r.to_json()
        );
        assert_eq!(
            r.error.as_ref().unwrap().name.as_deref(),
            Some(name),
            "{code}"
        );
        assert_eq!(r.exit_code, exit, "{code}");
        assert!(r.state_lost, "{code}");
        let r = run(s.as_ref(), "print('kept' in dir())").await;
        assert_eq!(ok(&r), "False\n", "after {code}");
    }
    // The process ending with status 0 (os._exit(0)) is a normal end: success, but the
    // state went with it.
    let r = run(
        s.as_ref(),
        "kept = 1\nprint('done', flush=True)\nimport os\nos._exit(0)",
    )
    .await;
    assert!(
        r.success && r.error.is_none() && r.state_lost,
        "{}",
        r.to_json()
    );
    assert_eq!((r.exit_code, r.stdout.as_str()), (0, "done\n"));
    let r = run(s.as_ref(), "print('kept' in dir())").await;
    assert_eq!(ok(&r), "False\n");
    s.close().await.unwrap();
}

/// Code that kills every process it can reaches only its own: the supervisor runs under
/// another uid. The interpreter that is killed that way is reported, never a hang, and
/// the next run works.
pub async fn killing_everything_reaches_only_user_code(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    ok(&run(s.as_ref(), "kept = 1").await);
    // kill(-1) spares its caller: the interpreter lives, with its state.
    let r = run(
        s.as_ref(),
        "import os\ntry:\n    os.kill(-1, 9)\nexcept ProcessLookupError:\n    pass  # nothing of its own to kill\nprint('alive', kept)",
    )
    .await;
    assert_eq!(ok(&r), "alive 1\n");
    let r = run(s.as_ref(), "import os\nos.kill(os.getppid(), 9)").await;
    assert_eq!(
        r.error.as_ref().and_then(|e| e.name.as_deref()),
        Some("PermissionError"),
        "{}",
        r.to_json()
    );
    assert!(!r.state_lost);
    // From a child, kill(-1) takes the interpreter too: crashed, state lost.
    let r = run(
        s.as_ref(),
        "import subprocess, sys\nsubprocess.run([sys.executable, '-c', 'import os; os.kill(-1, 9)'])",
    )
    .await;
    assert_eq!(r.error_kind(), Some(ErrorKind::Crashed), "{}", r.to_json());
    assert!(r.state_lost);
    assert_eq!(r.exit_code, 137);
    let r = run(s.as_ref(), "print('kept' in dir())").await;
    assert_eq!(ok(&r), "False\n");
    s.close().await.unwrap();
}

/// Closing fds 0-2 or replacing sys.stdout does not break the next run.
pub async fn stdio_sabotage_is_repaired(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    let r = run(
        s.as_ref(),
        "import sys, io\nsys.stdout = io.StringIO()\nprint('hidden')\nx = 1",
    )
    .await;
    assert!(r.success);
    assert_eq!(r.stdout, "");
    assert_eq!(
        ok(&run(s.as_ref(), "print('visible', x)").await),
        "visible 1\n"
    );
    let r = run(
        s.as_ref(),
        "import os\nos.close(0); os.close(1); os.close(2)\ny = 2",
    )
    .await;
    assert!(r.success, "{}", r.to_json());
    assert_eq!(ok(&run(s.as_ref(), "print('back', y)").await), "back 2\n");
    s.close().await.unwrap();
}

/// Forks of the interpreter made by user code never take over the session: a child that
/// runs to the end of its cell ends there, and a pool's children do not hide the
/// interpreter's death.
pub async fn forked_interpreters_do_not_take_over(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    let r = run(
        s.as_ref(),
        "import os\npid = os.fork()\nwho = 'child' if pid == 0 else 'parent'\nif pid:\n    os.waitpid(pid, 0)\n    print(who)",
    )
    .await;
    assert_eq!(
        ok(&r),
        "parent\n",
        "only the interpreter's own output: {}",
        r.to_json()
    );
    for _ in 0..5 {
        let r = run(s.as_ref(), "print(who)").await;
        assert_eq!(ok(&r), "parent\n", "a forked child answered a run");
    }
    let t = std::time::Instant::now();
    let r = run(
        s.as_ref(),
        "import multiprocessing as mp\np = mp.get_context('fork').Pool(2)\nprint(p.map(abs, [-1, -2]))\nimport os\nos._exit(3)",
    )
    .await;
    assert_eq!(r.error_kind(), Some(ErrorKind::Crashed), "{}", r.to_json());
    assert!(
        t.elapsed() < std::time::Duration::from_secs(10),
        "death noticed at once: {:?}",
        t.elapsed()
    );
    assert_eq!(ok(&run(s.as_ref(), "print(1)").await), "1\n");
    s.close().await.unwrap();
}

/// What a run writes in a read-write exposure and then loses its sandbox (removed under
/// it) reaches the host, or the next result says what was not copied back: never lost
/// silently. Earlier runs' files are on the host and in the fresh sandbox.
pub async fn rw_changes_of_a_lost_sandbox_are_never_lost_silently(rt: &dyn SandboxRuntime) {
    let out = tempfile::tempdir().unwrap();
    let config = config_builder(rt)
        .await
        .expose_rw(out.path(), "/data/out")
        .build()
        .unwrap();
    let s = rt.create_session(&config).await.unwrap();
    ok(&run(
        s.as_ref(),
        "open('/data/out/a.txt', 'w').write('first run')",
    )
    .await);
    let id = s.info().await.unwrap().container_id;
    let (lost, _) = tokio::join!(
        s.run("open('/data/out/b.txt', 'w').write('second run')\nimport time\ntime.sleep(20)"),
        async {
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            rt.remove_sandbox(&id).await
        }
    );
    // The loss is reported by the run it hit (a result with state_lost) or, when that
    // run only learnt that the sandbox is gone, by the next one.
    let mut said = match lost {
        Err(biocage_core::Error::SandboxGone { .. }) => String::new(),
        Ok(r) => {
            assert!(r.state_lost && !r.success, "{}", r.to_json());
            r.stderr
        }
        Err(e) => panic!("{e}"),
    };
    let r = run(s.as_ref(), "print(open('/data/out/a.txt').read())").await;
    assert_eq!(ok(&r), "first run\n");
    assert!(r.state_lost || !said.is_empty(), "{}", r.to_json());
    said.push_str(&r.stderr);
    let arrived = out.path().join("b.txt").exists();
    assert!(
        arrived || (said.contains("NOT copied back") && said.contains("/data/out")),
        "b.txt neither reached the host nor was reported: {said}"
    );
    assert_eq!(
        std::fs::read_to_string(out.path().join("a.txt")).unwrap(),
        "first run"
    );
    // The next runs copy back as before.
    ok(&run(
        s.as_ref(),
        "open('/data/out/c.txt', 'w').write('third run')",
    )
    .await);
    assert_eq!(
        std::fs::read_to_string(out.path().join("c.txt")).unwrap(),
        "third run"
    );
    s.close().await.unwrap();
}
