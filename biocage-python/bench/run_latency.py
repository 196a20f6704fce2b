"""Per-run overhead of the Python package: ``Sandbox.run("x = 1")`` from Python against
the same runs made from Rust alone, on the same live session.

    python bench/run_latency.py [docker] [podman] [--runs N] [--rust-p50 ENGINE=MS ...]

Both series run on one session, interleaved in rounds (so that a busy machine slows
both alike): a round of Python-level runs (``Sandbox.run``: the GIL released, the
result parsed into an ``ExecutionResult``) and a round of Rust-only runs (a loop in the
extension, as ``tests/benches/latency.rs`` makes them). ``--rust-p50`` gives the figure
of the Rust benchmark run just before (scripts/bench.sh passes it) for a second
comparison. Engines default to BIOCAGE_TEST_ENGINES (else docker).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import biocage

LIMIT_MS = 0.5
CODE = "x = 1"


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round((len(s) - 1) * p))]


def bench(engine: str, runs: int, rust_p50: float | None) -> bool:
    caps = biocage.capabilities(engine)
    with biocage.Sandbox(runtime=engine, allow_unenforced_limits=not caps["cgroup_limits"]) as sb:
        core = sb._core
        assert core is not None
        for _ in range(50):
            sb.run(CODE)
        core.bench_native(CODE, 50)
        python: list[float] = []
        native: list[float] = []
        rounds = 20
        per_round = max(1, runs // rounds)
        for _ in range(rounds):
            for _ in range(per_round):
                started = time.perf_counter()
                r = sb.run(CODE)
                python.append(time.perf_counter() - started)
                if not r.success:
                    raise SystemExit(f"run failed: {r.to_json()}")
            native.extend(core.bench_native(CODE, per_round))
    ms = 1000.0
    py50, py99, pymean = pct(python, 0.5) * ms, pct(python, 0.99) * ms, statistics.mean(python) * ms
    rs50, rs99, rsmean = pct(native, 0.5) * ms, pct(native, 0.99) * ms, statistics.mean(native) * ms
    overhead = py50 - rs50
    print(f"== python {engine} ({len(python)} runs of Sandbox.run({CODE!r}), interleaved)")
    print(f"python Sandbox.run: p50 {py50:.3f} ms  p99 {py99:.3f} ms  mean {pymean:.3f} ms")
    print(f"rust, same session: p50 {rs50:.3f} ms  p99 {rs99:.3f} ms  mean {rsmean:.3f} ms")
    ok = overhead <= LIMIT_MS
    print(
        f"python per-run overhead (p50): {overhead:+.3f} ms "
        f"({'within' if ok else 'OVER'} the {LIMIT_MS} ms budget)"
    )
    if rust_p50 is not None:
        against = py50 - rust_p50
        ok_bench = against <= LIMIT_MS
        ok = ok and ok_bench
        print(
            f"against the Rust benchmark's warm p50 {rust_p50:.3f} ms: {against:+.3f} ms "
            f"({'within' if ok_bench else 'OVER'} the {LIMIT_MS} ms budget)"
        )
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("engines", nargs="*", metavar="docker|podman", default=[])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--rust-p50", action="append", default=[], metavar="ENGINE=MS")
    args = parser.parse_args()
    engines = args.engines or [
        e.strip() for e in os.environ.get("BIOCAGE_TEST_ENGINES", "docker").split(",") if e.strip()
    ]
    for engine in engines:
        if engine not in ("docker", "podman"):
            parser.error(f"unknown engine {engine!r}: docker or podman")
    rust = dict(item.split("=", 1) for item in args.rust_p50)
    ok = True
    for engine in engines:
        figure = float(rust[engine]) if engine in rust else None
        ok = bench(engine, args.runs, figure) and ok
    if not ok:
        print("note: over budget (a busy machine slows the Python side more: run again to confirm)")


if __name__ == "__main__":
    main()
