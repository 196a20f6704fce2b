//! Many sessions at once: every result reaches the run that asked for it.

use biocage_core::{SandboxRuntime, Session};

use crate::harness::{config, ok, run};

const SESSIONS: usize = 20;
const RUNS: usize = 50;

/// 20 sessions in parallel, 50 runs each, good and failing code mixed: no result is lost
/// or mixed up; prints the memory of an idle session.
pub async fn parallel_sessions_keep_results_apart(rt: &dyn SandboxRuntime) {
    let config = config(rt).await;
    let mut sessions: Vec<Box<dyn Session>> = Vec::new();
    for _ in 0..SESSIONS {
        sessions.push(rt.create_session(&config).await.expect("session"));
    }
    let idle = run(
        sessions[0].as_ref(),
        "import os\ntotal = 0\nfor p in os.listdir('/proc'):\n    if p.isdigit():\n        try:\n            for l in open(f'/proc/{p}/status'):\n                if l.startswith('VmRSS:'):\n                    total += int(l.split()[1])\n        except OSError:\n            pass\nprint(total)",
    )
    .await;
    let kib: u64 = ok(&idle).trim().parse().unwrap();
    eprintln!(
        "{}: memory of an idle session (resident, init + supervisor + interpreter): {:.1} MiB",
        rt.name(),
        kib as f64 / 1024.0
    );
    crate::harness::note_capability(
        rt.name(),
        "parallel_sessions_keep_results_apart",
        &format!(
            "idle session resident memory {:.1} MiB",
            kib as f64 / 1024.0
        ),
    );
    let workloads = sessions.iter().enumerate().map(|(k, s)| async move {
        ok(&run(s.as_ref(), "count = 0").await);
        for i in 0..RUNS {
            let tag = format!("s{k}-r{i}");
            if i % 5 == 3 {
                let r = run(s.as_ref(), &format!("raise ValueError('{tag}')")).await;
                assert_eq!(r.exit_code, 1);
                assert_eq!(
                    r.error.as_ref().unwrap().message,
                    tag,
                    "a failure went to the wrong run"
                );
            } else {
                let r = run(s.as_ref(), &format!("count += 1\nprint('{tag}', count)")).await;
                let expected = i + 1 - (i + 2) / 5;
                assert_eq!(
                    ok(&r),
                    format!("{tag} {expected}\n"),
                    "a result went to the wrong run"
                );
            }
        }
    });
    futures_util::future::join_all(workloads).await;
    for s in sessions {
        s.close().await.unwrap();
    }
}
