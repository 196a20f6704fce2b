//! Scale benchmark, per engine, each figure beside its baseline from the same run:
//!   cold start (new session to first result)     vs  pool acquire (p50, p99)
//!   warm trivial run (p50, p99)
//!   first streamed byte: print() in the sandbox to the event on the host
//!   throughput of trivial runs with 1, 8 and 32 sessions in parallel (ratio to 1)
//!   replacing a crashed worker (the crashing run's round trip, then the next run)
//!   100 then 200 live sessions: open and close time, memory per idle session
//!   (all included: the host's MemAvailable; container side: PSS of the sandbox's
//!   processes; host side: this process's RSS)
//!
//!   cargo bench -p biocage-conformance --bench scale [-- docker podman] [--sessions 100,200]

use std::sync::Arc;
use std::time::{Duration, Instant};

use biocage_conformance::bench::{self, ms, percentile};
use biocage_conformance::harness;
use biocage_core::{PoolOptions, RunEvent, RunOptions, SandboxRuntime, Session, SessionPool};

fn mib(bytes: f64) -> f64 {
    bytes / f64::from(1u32 << 20)
}

/// A field of /proc/meminfo or /proc/self/status, in bytes.
fn kb_field(path: &str, key: &str) -> f64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0)
        * 1024.0
}

/// Proportional memory (PSS, bytes) of every agent process on this host (init,
/// supervisor and worker: all carry the agent's marks in their argv), by role. Needs
/// root to read other users' smaps.
fn agent_pss() -> [f64; 2] {
    let mut roles = [0.0, 0.0];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let path = entry.path();
        let Ok(cmd) = std::fs::read(path.join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let role = if args.contains(&&b"biocage-init"[..]) {
            0
        } else if args.contains(&&b"biocage-serve"[..]) {
            1
        } else {
            continue;
        };
        roles[role] += kb_field(&path.join("smaps_rollup").to_string_lossy(), "Pss:");
    }
    roles
}

/// Containers running `sleep`, as the engine's own per-container memory baseline.
fn bare_containers(engine: &str, image: &str, n: usize) -> Vec<String> {
    (0..n)
        .filter_map(|_| {
            let out = bench::engine_cli(engine)
                .args([
                    "run",
                    "-d",
                    "--rm",
                    "--network",
                    "none",
                    "--read-only",
                    image,
                    "sleep",
                    "600",
                ])
                .output()
                .ok()?;
            Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
        })
        .collect()
}

async fn open_many(
    rt: &dyn SandboxRuntime,
    config: &biocage_core::SandboxConfig,
    n: usize,
) -> Vec<Box<dyn Session>> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let batch = (n - out.len()).min(8);
        let made =
            futures_util::future::join_all((0..batch).map(|_| rt.create_session(config))).await;
        out.extend(made.into_iter().map(|s| s.expect("session")));
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn throughput(sessions: &[Box<dyn Session>], window: Duration) -> f64 {
    let started = Instant::now();
    let counts = futures_util::future::join_all(sessions.iter().map(|s| async move {
        let mut n = 0u32;
        while started.elapsed() < window {
            s.run("pass").await.expect("run");
            n += 1;
        }
        n
    }))
    .await;
    f64::from(counts.iter().sum::<u32>()) / started.elapsed().as_secs_f64()
}

async fn bench(engine: &str, sizes: &[usize]) {
    let rt: Arc<dyn SandboxRuntime> =
        Arc::from(harness::connect(engine).await.expect("engine reachable"));
    let config = harness::config(rt.as_ref()).await;
    println!("== {engine}");

    // Cold start against pool acquire.
    let mut cold = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let s = rt.create_session(&config).await.expect("session");
        s.run("pass").await.expect("run");
        cold.push(t.elapsed());
        s.close().await.expect("close");
    }
    cold.sort();
    let pool = SessionPool::new(rt.clone(), config.clone(), PoolOptions::new(4))
        .await
        .expect("pool");
    let mut acquire = Vec::new();
    for _ in 0..30 {
        // A pool at rest (its refills done): what a caller gets at once.
        pool.wait_ready(4, Duration::from_secs(60)).await;
        let t = Instant::now();
        let s = pool.acquire().await.expect("acquire");
        acquire.push(t.elapsed());
        tokio::spawn(async move { s.close().await });
    }
    acquire.sort();
    pool.shutdown().await;
    println!(
        "pool acquire: p50 {:.2} ms  p99 {:.2} ms   baseline cold start p50 {:.1} ms   ({:.0}x faster)",
        ms(percentile(&acquire, 0.5)),
        ms(percentile(&acquire, 0.99)),
        ms(percentile(&cold, 0.5)),
        percentile(&cold, 0.5).as_secs_f64() / percentile(&acquire, 0.5).as_secs_f64()
    );

    // Warm run, first streamed byte, crash replacement: one session.
    let s = rt.create_session(&config).await.expect("session");
    let mut warm = Vec::new();
    for _ in 0..1000 {
        let t = Instant::now();
        s.run("pass").await.expect("run");
        warm.push(t.elapsed());
    }
    warm.sort();
    println!(
        "warm trivial run: p50 {:.3} ms  p99 {:.3} ms",
        ms(percentile(&warm, 0.5)),
        ms(percentile(&warm, 0.99))
    );
    let mut first = Vec::new();
    for _ in 0..20 {
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let opts = RunOptions::default();
        let code = "import time\nprint(repr(time.time()), flush=True)\ntime.sleep(0.2)";
        let run = s.run_streaming(code, &opts, tx);
        let got = async {
            let event = rx.recv().await;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            match event {
                Some(RunEvent::Stdout(t)) => t.trim().parse::<f64>().map(|p| now - p).ok(),
                _ => None,
            }
        };
        let (lag, _) = tokio::join!(got, run);
        if let Some(lag) = lag {
            first.push(Duration::from_secs_f64(lag.max(0.0)));
        }
    }
    first.sort();
    println!(
        "first streamed byte after print(): p50 {:.2} ms  p99 {:.2} ms   (warm run p50 {:.3} ms)",
        ms(percentile(&first, 0.5)),
        ms(percentile(&first, 0.99)),
        ms(percentile(&warm, 0.5))
    );
    let mut crash = Vec::new();
    let mut next = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let r = s.run("import os\nos._exit(1)").await.expect("run");
        crash.push(t.elapsed());
        assert!(r.state_lost);
        let t = Instant::now();
        s.run("pass").await.expect("run");
        next.push(t.elapsed());
    }
    crash.sort();
    next.sort();
    println!(
        "crashed worker replaced: crashing run p50 {:.1} ms, next run p50 {:.1} ms, together {:.1} ms   (warm run p50 {:.3} ms)",
        ms(percentile(&crash, 0.5)),
        ms(percentile(&next, 0.5)),
        ms(percentile(&crash, 0.5) + percentile(&next, 0.5)),
        ms(percentile(&warm, 0.5))
    );
    s.close().await.expect("close");

    // Throughput with 1, 8, 32 sessions: five rounds of 2 s windows, interleaved so that
    // a noisy moment of the machine does not fall on one size only; medians of rounds.
    let many = open_many(rt.as_ref(), &config, 32).await;
    let (mut one, mut eight, mut all) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        one.push(throughput(&many[..1], Duration::from_secs(2)).await);
        eight.push(throughput(&many[..8], Duration::from_secs(2)).await);
        all.push(throughput(&many, Duration::from_secs(2)).await);
    }
    let ratios: Vec<f64> = eight.iter().zip(&one).map(|(e, o)| e / o).collect();
    let (one, eight, all) = (median(one), median(eight), median(all));
    println!(
        "throughput of trivial runs (median of 5 rounds): 1 session {one:.0}/s, 8 sessions {eight:.0}/s ({:.2}x), 32 sessions {all:.0}/s ({:.2}x); 8-to-1 ratio per round {}",
        eight / one,
        all / one,
        ratios.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(" ")
    );
    for s in many {
        s.close().await.expect("close");
    }

    // The engine's own cost of a container, without BioCage: `sleep` in the same image.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = kb_field("/proc/meminfo", "MemAvailable:");
    let bare = bare_containers(engine, &config.image, 20);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let bare_cost = mib((before - kb_field("/proc/meminfo", "MemAvailable:")) / 20.0);
    let mut rm = bench::engine_cli(engine);
    rm.args(["rm", "-f"]).args(&bare);
    let _ = rm.output();
    println!("baseline: a bare container running `sleep` costs {bare_cost:.1} MiB (host MemAvailable, mean of 20)");

    // Many live sessions.
    for &n in sizes {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let avail_before = kb_field("/proc/meminfo", "MemAvailable:");
        let rss_before = kb_field("/proc/self/status", "VmRSS:");
        let pss_before = agent_pss();
        let t = Instant::now();
        let sessions = open_many(rt.as_ref(), &config, n).await;
        let opened = t.elapsed();
        let answers = futures_util::future::join_all(sessions.iter().map(|s| s.run("1"))).await;
        let answered = answers
            .iter()
            .filter(|r| r.as_ref().is_ok_and(|r| r.value.as_deref() == Some("1")))
            .count();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let avail_after = kb_field("/proc/meminfo", "MemAvailable:");
        let rss_after = kb_field("/proc/self/status", "VmRSS:");
        let pss_after = agent_pss();
        let t = Instant::now();
        futures_util::future::join_all(sessions.into_iter().map(|s| s.close())).await;
        let closed = t.elapsed();
        #[allow(clippy::cast_precision_loss)]
        let per = |bytes: f64| mib(bytes / n as f64);
        println!(
            "{n} live sessions: opened in {:.1} s, {answered}/{n} answered a run, closed in {:.1} s; memory per idle session: {:.1} MiB all included (host MemAvailable; baseline bare container {bare_cost:.1} MiB), of which the agent's processes {:.1} MiB (PSS: init {:.1}, supervisor and interpreter {:.1}), this process {:.2} MiB",
            opened.as_secs_f64(),
            closed.as_secs_f64(),
            per(avail_before - avail_after),
            per(pss_after[0] + pss_after[1] - pss_before[0] - pss_before[1]),
            per(pss_after[0] - pss_before[0]),
            per(pss_after[1] - pss_before[1]),
            per(rss_after - rss_before)
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sizes: Vec<usize> = bench::option::<String>(&args, "--sessions")
        .map(|v| v.split(',').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_else(|| vec![100, 200]);
    let rt = bench::runtime();
    for e in bench::engines(&args) {
        rt.block_on(bench(&e, &sizes));
    }
}
