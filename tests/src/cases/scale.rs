//! Many sessions from one runtime: the session pool, streamed output, concurrency.

use std::sync::Arc;
use std::time::{Duration, Instant};

use biocage_core::{PoolOptions, RunEvent, RunOptions, SandboxRuntime, SessionPool};

use crate::harness::{config, ok, run, session};

/// Connects a second runtime object for `rt`'s engine (a pool needs one it can share).
async fn shared(rt: &dyn SandboxRuntime) -> Arc<dyn SandboxRuntime> {
    Arc::from(crate::harness::connect(rt.name()).await.unwrap())
}

/// Session ids of the sandboxes alive on the engine.
async fn live_ids(rt: &dyn SandboxRuntime) -> Vec<String> {
    rt.list_sandboxes()
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.state == "running")
        .map(|s| s.session_id)
        .collect()
}

/// A pool hands out started sessions at once, never one used before, refills, and
/// leaves no container behind when shut down or dropped.
pub async fn pool_hands_out_fresh_sessions(rt: &dyn SandboxRuntime) {
    let shared = shared(rt).await;
    let pool = SessionPool::new(shared.clone(), config(rt).await, PoolOptions::new(2))
        .await
        .unwrap();
    assert_eq!(pool.wait_ready(2, Duration::from_secs(60)).await, 2);
    let started = Instant::now();
    let a = pool.acquire().await.unwrap();
    let took = started.elapsed();
    ok(&run(a.as_ref(), "secret = 'a'").await);
    let a_id = a.info().await.unwrap().container_id;
    a.close().await.unwrap();
    let b = pool.acquire().await.unwrap();
    let r = run(b.as_ref(), "'secret' in globals()").await;
    assert_eq!(
        r.value.as_deref(),
        Some("False"),
        "a used session is never handed out again"
    );
    let b_id = b.info().await.unwrap().container_id;
    assert_ne!(a_id, b_id);
    assert_eq!(
        pool.wait_ready(2, Duration::from_secs(60)).await,
        2,
        "refilled"
    );
    assert!(pool.stats().handed_out >= 2);
    eprintln!("{}: pool acquire took {took:?}", rt.name());
    let ready_ids = pool.stats().ready_sessions;
    assert_eq!(ready_ids.len(), 2);
    let live = live_ids(rt).await;
    assert!(ready_ids.iter().all(|id| live.contains(id)));
    pool.shutdown().await;
    let left = live_ids(rt).await;
    assert!(
        ready_ids.iter().all(|id| !left.contains(id)),
        "shutdown closes the ready sessions"
    );
    b.close().await.unwrap();
    // Dropped (no shutdown): its sessions go too.
    let pool = SessionPool::new(shared.clone(), config(rt).await, PoolOptions::new(1))
        .await
        .unwrap();
    assert_eq!(pool.wait_ready(1, Duration::from_secs(60)).await, 1);
    let ready = pool.stats().ready_sessions;
    drop(pool);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = live_ids(rt).await;
        if ready.iter().all(|id| !now.contains(id)) {
            break;
        }
        assert!(Instant::now() < deadline, "a dropped pool left its session");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A pool whose sessions cannot start (a missing image) reports it, backs off, and
/// does not crash; acquire says why.
pub async fn pool_survives_engine_errors(rt: &dyn SandboxRuntime) {
    let shared = shared(rt).await;
    let config = crate::harness::config_builder(rt)
        .await
        .image("biocage-missing:never")
        .build()
        .unwrap();
    let pool = SessionPool::new(shared, config, PoolOptions::new(1))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while pool.stats().failed_refills < 2 {
        assert!(Instant::now() < deadline, "{:?}", pool.stats());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = pool.stats();
    assert!(stats.last_error.unwrap().contains("biocage-missing"));
    let err = pool.acquire().await.err().expect("no session").to_string();
    assert!(err.contains("biocage-missing"), "{err}");
    pool.shutdown().await;
}

/// Output arrives while the run goes on; the result is still complete; a consumer that
/// never reads neither blocks the sandbox nor grows memory.
pub async fn output_streams_while_running(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let code = "import time\nprint('first', flush=True)\ndisplay({'k': 1})\ntime.sleep(2)\nprint('second')";
    let started = Instant::now();
    let opts = RunOptions::default();
    let (first, first_at, r) = {
        let going = s.run_streaming(code, &opts, tx);
        tokio::pin!(going);
        let first = tokio::select! {
            e = rx.recv() => e,
            _ = &mut going => panic!("the run ended before any event"),
        };
        let first_at = started.elapsed();
        (first, first_at, going.await.unwrap())
    };
    assert_eq!(first, Some(RunEvent::Stdout("first\n".into())));
    assert!(
        first_at < Duration::from_millis(1500),
        "first event after {first_at:?}"
    );
    assert_eq!(ok(&r), "first\nsecond\n");
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    assert!(
        matches!(events.first(), Some(RunEvent::Display(d)) if d["text/plain"] == "{'k': 1}"),
        "{events:?}"
    );
    assert!(events.contains(&RunEvent::Stdout("second\n".into())));
    // Nobody reads: 200 MB of output; the run ends, capped, and the session goes on.
    let (tx, _never_read) = tokio::sync::mpsc::channel(1);
    let r = s
        .run_streaming(
            "import sys\nfor _ in range(200):\n    sys.stdout.write('x' * (1 << 20))",
            &RunOptions::default(),
            tx,
        )
        .await
        .unwrap();
    assert!(r.stdout_truncated);
    assert_eq!(ok(&run(s.as_ref(), "print('on')").await), "on\n");
    s.close().await.unwrap();
}

/// One runtime serves many sessions from many tasks: runs of different sessions go in
/// parallel, runs of one session in order, and a caller that gives up mid-run leaves
/// the session usable (its run is interrupted).
pub async fn concurrency_is_served(rt: &dyn SandboxRuntime) {
    let shared = shared(rt).await;
    let cfg = config(rt).await;
    let mut sessions = Vec::new();
    for _ in 0..4 {
        sessions.push(shared.create_session(&cfg).await.unwrap());
    }
    // In parallel: four 1 s sleeps take about 1 s, not 4.
    let started = Instant::now();
    let runs = sessions
        .iter()
        .map(|s| s.run("import time\ntime.sleep(1)\n'done'"));
    for r in futures_util::future::join_all(runs).await {
        assert_eq!(r.unwrap().value.as_deref(), Some("'done'"));
    }
    assert!(
        started.elapsed() < Duration::from_millis(3000),
        "runs of different sessions go in parallel: {:?}",
        started.elapsed()
    );
    // In order, within one session.
    let s = sessions[0].as_ref();
    let (a, b) = tokio::join!(s.run("import time\nlog = ['a']\ntime.sleep(0.3)"), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.run("log.append('b')\nlog").await
    });
    a.unwrap();
    assert_eq!(b.unwrap().value.as_deref(), Some("['a', 'b']"));
    // A caller that gives up: its future is dropped mid-run.
    ok(&run(s, "kept = 7").await);
    let gave_up = tokio::time::timeout(
        Duration::from_millis(500),
        s.run("import time\ntime.sleep(20)"),
    )
    .await;
    assert!(gave_up.is_err());
    let started = Instant::now();
    let r = run(s, "kept").await;
    assert_eq!(r.value.as_deref(), Some("7"), "{}", r.to_json());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the abandoned run was interrupted: {:?}",
        started.elapsed()
    );
    for s in sessions {
        s.close().await.unwrap();
    }
}
