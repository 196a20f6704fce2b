//! Latency benchmark: cold start and warm round trip of BioCage sessions, each against
//! a baseline measured in the same run on the same engine:
//!   cold start (new session to first result)  vs  `ENGINE run --rm IMAGE python3 -c pass`
//!   warm trivial run (p50, p99)                vs  `ENGINE exec CTR python3 -c pass`
//!
//!   cargo bench -p biocage-conformance --bench latency [-- docker podman] [--runs N]
//!
//! Engines default to BIOCAGE_TEST_ENGINES (else docker). For Podman the CLI baseline
//! talks to the same API socket (`podman --remote --url ...`).

use std::time::{Duration, Instant};

use biocage_conformance::bench::{self, ms, percentile};
use biocage_conformance::harness;

fn time_cli(engine: &str, args: &[&str], n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let status = bench::engine_cli(engine)
            .args(args)
            .status()
            .expect("engine CLI runs");
        assert!(status.success(), "{engine} {args:?} failed");
        out.push(t.elapsed());
    }
    out.sort();
    out
}

async fn bench(engine: &str, runs: usize, cold_n: usize) {
    let rt = harness::connect(engine).await.expect("engine reachable");
    let config = harness::config(rt.as_ref()).await;
    let image = config.image.clone();
    let ulimits = [
        "--ulimit",
        "nofile=4096:4096",
        "--ulimit",
        "nproc=1024:1024",
    ];

    // Cold start: new session to first result (close not timed).
    let mut cold = Vec::new();
    for _ in 0..cold_n {
        let t = Instant::now();
        let s = rt.create_session(&config).await.expect("session");
        let r = s.run("pass").await.expect("run");
        cold.push(t.elapsed());
        assert!(r.success);
        s.close().await.expect("close");
    }
    cold.sort();
    let mut args = vec!["run", "--rm", "--network", "none"];
    args.extend(bench::isolation_args(engine));
    args.extend(ulimits);
    args.extend([image.as_str(), "python3", "-c", "pass"]);
    let cold_base = time_cli(engine, &args, cold_n);

    // Warm round trip of a trivial run in one live session.
    let s = rt.create_session(&config).await.expect("session");
    for _ in 0..50 {
        s.run("pass").await.expect("warm-up");
    }
    let mut warm = Vec::with_capacity(runs);
    let total = Instant::now();
    for _ in 0..runs {
        let t = Instant::now();
        let r = s.run("pass").await.expect("run");
        warm.push(t.elapsed());
        debug_assert!(r.success);
    }
    let total = total.elapsed();
    warm.sort();
    let ctr = s.info().await.expect("info").container_id;
    let exec_base = time_cli(
        engine,
        &["exec", "--user", "1000:1000", &ctr, "python3", "-c", "pass"],
        (runs / 20).clamp(20, 100),
    );
    s.close().await.expect("close");

    let cold_p50 = percentile(&cold, 0.5);
    let cold_base_p50 = percentile(&cold_base, 0.5);
    let warm_p50 = percentile(&warm, 0.5);
    let warm_p99 = percentile(&warm, 0.99);
    let exec_p50 = percentile(&exec_base, 0.5);
    println!("== {engine} ({runs} warm runs, {cold_n} cold starts)");
    println!(
        "cold start, new session to first result: p50 {:8.1} ms   baseline `{engine} run --rm` p50 {:8.1} ms   ratio {:.2}x",
        ms(cold_p50),
        ms(cold_base_p50),
        cold_p50.as_secs_f64() / cold_base_p50.as_secs_f64()
    );
    println!(
        "warm trivial run: p50 {:.3} ms  p99 {:.3} ms  mean {:.3} ms   baseline `{engine} exec python3 -c pass` p50 {:.1} ms   speed-up {:.0}x",
        ms(warm_p50),
        ms(warm_p99),
        ms(total) / runs as f64,
        ms(exec_p50),
        exec_p50.as_secs_f64() / warm_p50.as_secs_f64()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs = bench::option(&args, "--runs").unwrap_or(2000);
    let cold_n = bench::option(&args, "--cold").unwrap_or(10);
    let rt = bench::runtime();
    for e in bench::engines(&args) {
        rt.block_on(bench(&e, runs, cold_n));
    }
}
