//! Limits: memory, processes, cpu; each enforced and reported with its mechanism.

use biocage_core::{Enforcement, ErrorKind, SandboxRuntime};

use crate::harness::{caps, config_builder, ok, run, run_for, session};

/// Every limit is reported with how it is held, and none is silently unenforced.
pub async fn limits_are_reported(rt: &dyn SandboxRuntime) {
    let caps = caps(rt).await;
    let s = session(rt).await;
    let info = s.info().await.unwrap();
    let get = |n: &str| {
        info.limits
            .iter()
            .find(|l| l.name == n)
            .unwrap_or_else(|| panic!("no {n} limit"))
    };
    // Without cgroups (rootless Podman on cgroup v1) gVisor is held as runc is there.
    let gvisor = info.isolation == biocage_core::Isolation::Gvisor && caps.cgroup_limits;
    let (memory, pids) = if gvisor {
        // gVisor's kernel holds them per process (the host's cgroup, above, the sandbox).
        (Enforcement::Rlimit, Enforcement::Rlimit)
    } else if caps.cgroup_limits {
        (Enforcement::Engine, Enforcement::Engine)
    } else {
        // Rlimits bound each process, not the sandbox's sum: memory is said unenforced.
        (Enforcement::Unenforced, Enforcement::Rlimit)
    };
    assert_eq!(get("memory").enforcement, memory);
    assert_eq!(get("pids").enforcement, pids);
    assert_eq!(get("timeout").enforcement, Enforcement::Agent);
    assert_eq!(get("network").enforcement, Enforcement::Engine);
    if gvisor {
        crate::harness::note_capability(
            rt.name(),
            "limits_are_reported",
            "gVisor: memory per process by RLIMIT_AS and the sandbox by the host's cgroup (no cgroup files inside), cpu not held by runsc here (reported unenforced)",
        );
        assert_eq!(get("cpu").enforcement, Enforcement::Unenforced);
        let r = run(
            s.as_ref(),
            "import resource\nprint(resource.getrlimit(resource.RLIMIT_AS)[0])",
        )
        .await;
        assert_eq!(ok(&r).trim(), (512u64 << 20).to_string());
    } else if caps.cgroup_limits {
        assert_eq!(get("cpu").enforcement, Enforcement::Engine);
        // No swap on top of memory: the cgroup's memory+swap limit equals the memory limit.
        let r = run(
            s.as_ref(),
            "import os\nd = '/sys/fs/cgroup/memory/'\nm = open(d + 'memory.limit_in_bytes').read().strip()\nsw = open(d + 'memory.memsw.limit_in_bytes').read().strip() if os.path.exists(d + 'memory.memsw.limit_in_bytes') else 'no-swap-accounting'\nprint(m, sw)",
        )
        .await;
        let out = ok(&r).trim().to_string();
        let (mem, swap) = out.split_once(' ').unwrap();
        assert_eq!(mem, (512u64 << 20).to_string(), "{out}");
        assert!(
            swap == mem || swap == "no-swap-accounting",
            "swap allowed on top of memory: {out}"
        );
    } else {
        crate::harness::note_capability(
            rt.name(),
            "limits_are_reported",
            "no cgroup limits (rootless, cgroup v1): pids held by RLIMIT_NPROC; memory bounded per process only (RLIMIT_DATA, RLIMIT_AS, memfd refused) and cpu not at all, both reported unenforced",
        );
        assert_eq!(get("cpu").enforcement, Enforcement::Unenforced);
    }
    s.close().await.unwrap();
}

/// Where a limit cannot be held at all, the session refuses to start unless allowed.
pub async fn unenforceable_limit_refuses_to_start(rt: &dyn SandboxRuntime) {
    let planned = rt.limit_plan(&biocage_core::SandboxConfig::default()).await;
    let Err(planned) = planned else {
        crate::harness::note_capability(
            rt.name(),
            "unenforceable_limit_refuses_to_start",
            "every limit enforceable: checked that the default config is accepted instead",
        );
        return;
    };
    let biocage_core::Error::UnenforceableLimit { limit, .. } = &planned else {
        panic!("the plan fails otherwise: {planned}");
    };
    // Rootless on cgroup v1: memory; gVisor here: cpu.
    let expected = if caps(rt).await.cgroup_limits {
        "cpu"
    } else {
        "memory"
    };
    assert_eq!(limit.as_str(), expected, "{planned}");
    let err = rt
        .create_session(&biocage_core::SandboxConfig::default())
        .await
        .err()
        .expect("must refuse");
    assert!(err.to_string().contains(expected), "{err}");
    assert!(err.to_string().contains("allow_unenforced_limits"), "{err}");
}

/// A memory bomb ends as an oom result; the session stays usable.
pub async fn memory_bomb_is_oom(rt: &dyn SandboxRuntime) {
    let config = config_builder(rt).await.memory("256m").build().unwrap();
    let s = rt.create_session(&config).await.unwrap();
    ok(&run(s.as_ref(), "import numpy as np\nsmall = np.ones(10)").await);
    for code in [
        "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 * 1024))",
        "import numpy as np\nbig = np.ones(2_000_000_000)",
    ] {
        let r = run_for(s.as_ref(), code, 60.0).await;
        assert!(!r.success);
        assert_eq!(
            r.error_kind(),
            Some(ErrorKind::Oom),
            "{code}: {}",
            r.to_json()
        );
        assert_eq!(r.exit_code, 137);
        let r = run(
            s.as_ref(),
            "chunks = None; big = None\nprint(sum(range(10)))",
        )
        .await;
        assert_eq!(ok(&r), "45\n");
    }
    s.close().await.unwrap();
}

/// A fork bomb is bounded by the process limit; the session recovers.
pub async fn fork_bomb_is_bounded(rt: &dyn SandboxRuntime) {
    let config = config_builder(rt).await.pids_limit(64).build().unwrap();
    let s = rt.create_session(&config).await.unwrap();
    let code = "import os, time\nn = 0\nwhile True:\n    try:\n        if os.fork() == 0:\n            time.sleep(30)\n            os._exit(0)\n        n += 1\n    except OSError as e:\n        print('fork failed after', n, e.errno)\n        break";
    let r = run_for(s.as_ref(), code, 20.0).await;
    assert!(r.stdout.contains("fork failed after"), "{}", r.to_json());
    let n: u32 = r.stdout.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert!(n < 64, "forked {n} processes with a limit of 64");
    // The sandbox's processes are the host's too: after the cull only init, the
    // supervisor and the interpreter are left.
    let count = run(
        s.as_ref(),
        "import os\nprint(len([p for p in os.listdir('/proc') if p.isdigit()]))",
    )
    .await;
    let left: u32 = ok(&count).trim().parse().unwrap();
    assert!(left <= 3, "{left} processes left after the fork bomb");
    assert!(
        r.stderr.contains("process limit"),
        "the cull is reported: {}",
        r.to_json()
    );
    let r = run(
        s.as_ref(),
        "import subprocess\nprint(subprocess.run(['true']).returncode, n > 0)",
    )
    .await;
    assert_eq!(
        ok(&r),
        "0 True\n",
        "the bomb's processes are gone and state is kept"
    );
    assert!(!r.state_lost);
    let r = run_for(s.as_ref(), "import threading, time\nts = []\nwhile True:\n    t = threading.Thread(target=time.sleep, args=(30,), daemon=True)\n    t.start()\n    ts.append(t)", 20.0).await;
    assert!(
        !r.success,
        "a thread flood ends in an error: {}",
        r.to_json()
    );
    s.restart().await.unwrap();
    let r = run(
        s.as_ref(),
        "import subprocess\nprint(subprocess.run(['true']).returncode)",
    )
    .await;
    assert_eq!(ok(&r), "0\n", "restart clears the thread flood");
    s.close().await.unwrap();
}
