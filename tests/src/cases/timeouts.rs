//! Time limits: interrupt first (state kept), kill if ignored (state lost), next run works.

use biocage_core::{ErrorKind, SandboxRuntime};

use crate::harness::{ok, run, run_for, session};

/// A run over its limit is interrupted; its state and the session's survive.
pub async fn timeout_interrupts_and_keeps_state(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    ok(&run(s.as_ref(), "kept = 41").await);
    let r = run_for(
        s.as_ref(),
        "import time\nprint('started', flush=True)\ntime.sleep(60)",
        1.0,
    )
    .await;
    assert!(!r.success);
    assert_eq!(r.exit_code, 124, "{}", r.to_json());
    assert_eq!(r.error_kind(), Some(ErrorKind::Timeout));
    assert!(!r.state_lost);
    assert_eq!(r.stdout, "started\n", "output before the timeout is kept");
    assert!(
        !r.stderr.contains("<string>") && !r.stderr.contains("on_sigint"),
        "agent frames leak: {}",
        r.stderr
    );
    assert!(
        r.execution_time >= 1.0 && r.execution_time < 10.0,
        "{}",
        r.execution_time
    );
    assert_eq!(ok(&run(s.as_ref(), "print(kept + 1)").await), "42\n");
    s.close().await.unwrap();
}

/// Code that ignores the interrupt is killed after the grace period and replaced.
pub async fn ignored_interrupt_is_killed(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    ok(&run(s.as_ref(), "kept = 1").await);
    for code in [
        "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass",
        "import time\nwhile True:\n    try:\n        time.sleep(10)\n    except BaseException:\n        pass",
        "import signal\nsignal.signal(signal.SIGINT, lambda *a: print('ignored'))\nwhile True: pass",
    ] {
        let r = run_for(s.as_ref(), code, 1.0).await;
        assert_eq!(r.exit_code, 124, "{}", r.to_json());
        assert_eq!(r.error_kind(), Some(ErrorKind::Timeout));
        assert!(r.state_lost, "{}", r.to_json());
        assert!(r.execution_time < 15.0);
        let r = run(s.as_ref(), "print('kept' in dir())").await;
        assert_eq!(ok(&r), "False\n", "state was replaced");
        assert!(!r.state_lost, "loss is reported once, by the run that lost it");
    }
    s.close().await.unwrap();
}

/// A blocking C call (time.sleep in C, a blocked read) still ends at the time limit.
pub async fn blocking_call_times_out(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    let r = run_for(
        s.as_ref(),
        "import os\nr, w = os.pipe()\nos.read(r, 1)",
        1.0,
    )
    .await;
    assert_eq!(r.exit_code, 124, "{}", r.to_json());
    assert_eq!(ok(&run(s.as_ref(), "print(1)").await), "1\n");
    s.close().await.unwrap();
}

/// Session::interrupt stops the run in progress with a KeyboardInterrupt; state kept.
pub async fn host_interrupt(rt: &dyn SandboxRuntime) {
    let s: std::sync::Arc<dyn biocage_core::Session> = session(rt).await.into();
    ok(&run(s.as_ref(), "kept = 'k'").await);
    let runner = {
        let s = s.clone();
        tokio::spawn(async move { s.run("import time\nwhile True: time.sleep(0.05)").await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    s.interrupt().await.unwrap();
    let r = runner.await.unwrap().unwrap();
    assert_eq!(r.exit_code, 1, "{}", r.to_json());
    assert_eq!(
        r.error.as_ref().unwrap().name.as_deref(),
        Some("KeyboardInterrupt")
    );
    assert!(r.execution_time < 10.0);
    assert_eq!(ok(&run(s.as_ref(), "print(kept)").await), "k\n");
}
