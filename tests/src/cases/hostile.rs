//! Hostile code against the supervisor: planted modules, forged results, strings the
//! host cannot parse, oversize fields and code. Each case is the attack itself.

use std::time::{Duration, Instant};

use biocage_core::{ErrorKind, SandboxRuntime};

use crate::harness::{ok, run, run_for, session};

/// Modules and `.pth` files planted in the workspace and the user site never run in an
/// agent process: not in a new supervisor (after user code killed the old one), not in
/// the kill helper, not in a fresh interpreter before its limits are set. An innocent
/// `json.py` does not break the session.
pub async fn planted_modules_never_run_in_the_agent(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    let plant = r#"
import os, sys, site
marker = "/tmp/pwned"
evil = "import os\nopen('%s-' + __name__ + '-' + str(os.getpid()), 'w').close()\n" % marker
names = ["signal", "json", "resource", "select", "ctypes", "base64", "errno", "stat",
         "codecs", "traceback", "linecache", "textwrap", "ast", "warnings", "io", "time"]
for name in names:
    with open(os.path.join(os.getcwd(), name + ".py"), "w") as f:
        f.write(evil)
user_site = site.getusersitepackages()
os.makedirs(user_site, exist_ok=True)
with open(os.path.join(user_site, "evil.pth"), "w") as f:
    f.write("import os; open('%s-pth-' + str(os.getpid()), 'w').close()\n" % marker)
print(os.getcwd(), user_site)
"#;
    ok(&run(s.as_ref(), plant).await);
    // A fresh interpreter (restart). User code cannot kill its supervisor (another uid);
    // a new supervisor only ever starts in a fresh sandbox.
    s.restart().await.unwrap();
    let r = run(s.as_ref(), "import os\nos.kill(os.getppid(), 9)").await;
    assert_eq!(
        r.error.as_ref().and_then(|e| e.name.as_deref()),
        Some("PermissionError"),
        "{}",
        r.to_json()
    );
    let r = run(
        s.as_ref(),
        r#"
import os, resource
print(sorted(n for n in os.listdir('/tmp') if n.startswith('pwned')))
print('nproc', resource.getrlimit(resource.RLIMIT_NPROC)[0])
print('data', resource.getrlimit(resource.RLIMIT_DATA)[0])
ppid = os.getppid()
status = open('/proc/%d/status' % ppid).read()
print('supervisor', [l for l in status.splitlines() if l.startswith(('NoNewPrivs', 'Seccomp:'))])
import json
print('json ok', json.dumps({'a': 1}))
"#,
    )
    .await;
    let out = ok(&r);
    assert!(
        out.contains("[]\n"),
        "planted code ran in an agent process: {out}"
    );
    let info = s.info().await.unwrap();
    // gVisor's /proc/PID/status has no NoNewPrivs line: there the supervisor's own
    // report, checked when it started (its hello), stands for it.
    let gvisor = info.isolation == biocage_core::Isolation::Gvisor;
    assert!(
        out.contains("NoNewPrivs:\\t1") || (gvisor && !out.contains("NoNewPrivs")),
        "{out}"
    );
    assert!(out.contains("Seccomp:\\t2"), "{out}");
    if info
        .limits
        .iter()
        .any(|l| l.name == "pids" && l.mechanism.contains("RLIMIT_NPROC"))
    {
        // The sandbox's 256 less the agent's two processes (init, supervisor), which
        // run under their own uid.
        assert!(
            out.contains("nproc 254"),
            "rlimits hold in a fresh interpreter: {out}"
        );
    }
    // The user's own modules are importable in the user's interpreter, as in `python -i`.
    assert!(out.contains("json ok"), "{out}");
    ok(&run(s.as_ref(), "open('mymod.py', 'w').write('X = 7')").await);
    let r = run(s.as_ref(), "import mymod\nmymod.X").await;
    assert_eq!(r.value.as_deref(), Some("7"), "{}", r.to_json());
    s.close().await.unwrap();
}

/// Python that finds the id of the run it is part of (`rid`), from the agent's frames,
/// as code that forges its run's reply would.
const RUN_ID: &str = r#"
import sys
f = sys._getframe()
rid = None
while f is not None:
    if isinstance(f.f_locals.get('req'), dict):
        rid = f.f_locals['req'].get('id')
    f = f.f_back
"#;

/// User code writes a forged reply onto the interpreter's result pipe, and a thread of
/// its own reads the command pipe to answer whatever the supervisor asks there (so that
/// no question about where the interpreter is can be answered from inside it): the
/// supervisor validates and caps the reply, keeps timing the run, and the run's
/// traceback stays in its run.
pub async fn forged_results_are_not_trusted(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    let forge = RUN_ID.to_string()
        + r#"
import json, os, time, base64, select, threading
fake = {"id": rid, "error": None, "value": "V" * (5 << 20), "culled": 99,
        "images": [{"mime": "text/html", "data": base64.b64encode(b"<script>x</script>").decode()}]}
def answer_for_the_loop():
    # Until just before the run's time limit: later it would take the next run's request.
    end = time.monotonic() + 1.2
    while time.monotonic() < end:
        if not select.select([200], [], [], max(0, end - time.monotonic()))[0]:
            break
        for line in os.read(200, 1 << 16).splitlines():
            try:
                req = json.loads(line)
            except ValueError:
                continue
            if isinstance(req, dict) and "nonce" in req:
                os.write(201, (json.dumps({"barrier": req["nonce"]}) + "\n").encode())
                os.write(201, (json.dumps(fake) + "\n").encode())
threading.Thread(target=answer_for_the_loop, daemon=True).start()
for fd in (201,):
    try:
        os.write(fd, (json.dumps(fake) + "\n").encode())
    except OSError:
        pass
time.sleep(4)
raise RuntimeError("late traceback of the forging run")
"#;
    let started = Instant::now();
    let r = run_for(s.as_ref(), &forge, 1.5).await;
    assert_eq!(r.exit_code, 124, "the time limit holds: {}", r.to_json());
    assert_eq!(r.error_kind(), Some(ErrorKind::Timeout));
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(r.value.as_deref().map_or(0, str::len) <= 70_000);
    assert!(
        r.images.iter().all(|i| i.mime == "image/png"),
        "{:?}",
        r.images
    );
    assert!(!r.stderr.contains("99 processes"), "{}", r.stderr);
    let r = run(s.as_ref(), "print('next')").await;
    assert_eq!(ok(&r), "next\n");
    assert!(!r.stderr.contains("late traceback"), "{}", r.to_json());
    s.close().await.unwrap();
}

/// The interpreter's main thread parks where no signal and no debugger can stop it (the
/// wait of a vfork whose child never execs) while a thread forges a reply: the
/// supervisor keeps its clock, ends the run at its time limit and stays responsive.
pub async fn unstoppable_main_thread_cannot_stall_the_supervisor(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    ok(&run(s.as_ref(), "kept = 1").await);
    let park = RUN_ID.to_string()
        + r#"
import ctypes, json, os, threading, time
def forge():
    time.sleep(0.3)
    fake = {"id": rid, "error": None, "value": "'forged'"}
    os.write(201, (json.dumps(fake) + "\n").encode())
threading.Thread(target=forge, daemon=True).start()
libc = ctypes.CDLL(None)
if libc.syscall(58) == 0:  # vfork: this thread waits until the child execs or exits
    libc.syscall(34)  # the child pauses instead, for ever
"#;
    let started = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(40),
        s.run_with_timeout(&park, Duration::from_secs(2)),
    )
    .await
    .expect("the supervisor answered within 40 s")
    .unwrap();
    assert!(
        !r.success,
        "the forged reply is not the result: {}",
        r.to_json()
    );
    assert_ne!(r.value.as_deref(), Some("'forged'"), "{}", r.to_json());
    assert!(
        matches!(r.exit_code, 124 | 137),
        "ended at its time limit: {}",
        r.to_json()
    );
    // The time limit, then the interrupt's grace (2 s): the supervisor's own clock, not
    // the host's last resort for a supervisor that stopped answering.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}: {}",
        started.elapsed(),
        r.to_json()
    );
    assert_eq!(r.error_kind(), Some(ErrorKind::Timeout), "{}", r.to_json());
    let r = run(s.as_ref(), "print('next')").await;
    assert_eq!(ok(&r), "next\n", "the session goes on");
    s.close().await.unwrap();
}

/// A run that makes its interpreter non-dumpable (as some libraries do) ends normally
/// and keeps its state: the supervisor still sees where the interpreter is.
pub async fn non_dumpable_interpreter_still_answers(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    let r = run_for(
        s.as_ref(),
        "import ctypes\nkept = ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)\nprint('set', kept)",
        10.0,
    )
    .await;
    assert_eq!(ok(&r), "set 0\n");
    assert!(r.execution_time < 5.0, "{}", r.to_json());
    let r = run(s.as_ref(), "print(kept + 1)").await;
    assert_eq!(ok(&r), "1\n", "state kept: {}", r.to_json());
    assert!(!r.state_lost);
    s.close().await.unwrap();
}

/// User code closes the interpreter's result pipe and goes on (as an exec would): the
/// supervisor reports a crash within seconds instead of waiting on a live interpreter,
/// and the session goes on with a fresh one.
pub async fn closed_result_pipe_is_a_crash_not_a_stall(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    let started = Instant::now();
    let r = run_for(
        s.as_ref(),
        "import os, time\nos.close(201)\ntime.sleep(60)",
        3.0,
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}: {}",
        started.elapsed(),
        r.to_json()
    );
    assert_eq!(r.error_kind(), Some(ErrorKind::Crashed), "{}", r.to_json());
    assert!(r.state_lost);
    assert_eq!(ok(&run(s.as_ref(), "print('next')").await), "next\n");
    s.close().await.unwrap();
}

/// The interpreter stops itself (SIGSTOP) between runs, and the next request is larger
/// than a pipe holds: the supervisor never blocks writing it, ends the run at its time
/// limit and goes on.
pub async fn unread_commands_cannot_stall_the_supervisor(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    ok(&run(
        s.as_ref(),
        "import os, signal, threading, time\nthreading.Thread(target=lambda: (time.sleep(0.3), os.kill(os.getpid(), signal.SIGSTOP))).start()",
    )
    .await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let big = format!("x = 1\n{}", "#".repeat(300_000));
    let started = Instant::now();
    let r = run_for(s.as_ref(), &big, 3.0).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}: {}",
        started.elapsed(),
        r.to_json()
    );
    assert!(!r.success, "{}", r.to_json());
    assert_eq!(r.exit_code, 124, "its own time limit: {}", r.to_json());
    assert!(
        !r.error
            .as_ref()
            .unwrap()
            .message
            .contains("stopped answering"),
        "{}",
        r.to_json()
    );
    assert_eq!(ok(&run(s.as_ref(), "print('next')").await), "next\n");
    s.close().await.unwrap();
}

/// Strings Python can hold but UTF-8 cannot (lone surrogates), NULs and escapes in every
/// result field: the reply stays well-formed and the session keeps its state.
pub async fn unencodable_strings_keep_the_session(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    ok(&run(s.as_ref(), "kept = 41").await);
    let bad = "b'\\xff'.decode('utf-8', 'surrogateescape')";
    let started = Instant::now();
    let r = run(s.as_ref(), &format!("raise ValueError({bad} + '\\x00end')")).await;
    assert_eq!(
        r.error_kind(),
        Some(ErrorKind::Exception),
        "{}",
        r.to_json()
    );
    assert!(!r.state_lost);
    let msg = &r.error.as_ref().unwrap().message;
    assert!(msg.contains("udcff") && msg.contains("end"), "{msg:?}");
    let r = run(
        s.as_ref(),
        &format!("class P:\n    def __repr__(self):\n        return {bad}\nP()"),
    )
    .await;
    ok(&r);
    assert!(
        r.value.as_deref().unwrap().contains("udcff"),
        "{}",
        r.to_json()
    );
    let r = run(
        s.as_ref(),
        &format!("import pandas as pd\npd.DataFrame({{'name': [{bad}]}})"),
    )
    .await;
    ok(&r);
    let r = run(
        s.as_ref(),
        &format!("import os\nopen({bad}, 'w').close()\nprint(os.listdir('.'))"),
    )
    .await;
    ok(&r);
    let names = s.read_file("/workspace").await;
    assert!(names.is_err(), "a folder is not a file");
    let r = run(s.as_ref(), "kept + 1").await;
    assert_eq!(
        r.value.as_deref(),
        Some("42"),
        "state kept: {}",
        r.to_json()
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "no run waited for a reply the host could not read"
    );
    s.close().await.unwrap();
}

/// Every field of a result has a cap: a 20 MB exception message, dozens of figures and
/// huge figures come back capped and quickly, with the session's state kept.
pub async fn result_fields_are_capped(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    ok(&run(s.as_ref(), "kept = 1").await);
    let started = Instant::now();
    let r = run(s.as_ref(), "raise ValueError('A' * (20 << 20))").await;
    let e = r.error.as_ref().unwrap();
    assert_eq!(e.kind, ErrorKind::Exception);
    assert!(e.message.len() <= 70_000, "message {}", e.message.len());
    assert!(e.truncated, "the cut is flagged");
    assert!(e.traceback.as_ref().unwrap().len() <= 300_000);
    assert!(r.to_json().len() < 4 << 20, "reply {}", r.to_json().len());
    let r = run(
        s.as_ref(),
        "import matplotlib.pyplot as plt\nfor i in range(40):\n    plt.figure()\n    plt.plot([i, 2])",
    )
    .await;
    ok(&r);
    assert!(r.images.len() <= 16, "{} images", r.images.len());
    assert!(r.images_truncated);
    let r = run(
        s.as_ref(),
        "import matplotlib.pyplot as plt\nfor i in range(10):\n    plt.figure(figsize=(20, 20), dpi=100)\n    plt.imshow([[i, 1], [2, 3]])",
    )
    .await;
    ok(&r);
    assert!(
        r.images_truncated,
        "figures over the pixel budget are skipped"
    );
    let r = run(s.as_ref(), "kept").await;
    assert_eq!(r.value.as_deref(), Some("1"));
    assert!(!r.state_lost);
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "{:?}",
        started.elapsed()
    );
    s.close().await.unwrap();
}

/// Code has a size cap with a clear error above it; below it, a large request is read in
/// linear time.
pub async fn large_code_is_capped_and_linear(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    ok(&run(s.as_ref(), "kept = 3").await);
    let big = format!("s = '{}'\nprint(len(s))", "x".repeat(15 << 20));
    let started = Instant::now();
    let r = run(s.as_ref(), &big).await;
    assert_eq!(ok(&r).trim(), (15 << 20).to_string());
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "15 MiB of code took {took:?}"
    );
    let too_big = "#".repeat(17 << 20);
    let err = s.run(&too_big).await.unwrap_err().to_string();
    assert!(err.contains("code") && err.contains("16"), "{err}");
    let r = run(s.as_ref(), "kept").await;
    assert_eq!(r.value.as_deref(), Some("3"));
    s.close().await.unwrap();
}

/// Sandbox code shares no uid with its supervisor: it cannot signal, trace or read it
/// (its memory, its control channel's pipes), nor PID 1; it holds no capability, not even in its bounding set; and a daemon it
/// leaves behind, which kills every new process it sees, stops nothing of the agent's.
pub async fn sandbox_code_cannot_reach_its_supervisor(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    ok(&run(s.as_ref(), "kept = 1").await);
    let r = run(
        s.as_ref(),
        r#"
import ctypes, errno, os, signal
libc = ctypes.CDLL(None, use_errno=True)
sup = os.getppid()
def status(pid):
    return dict(l.split(':', 1) for l in open('/proc/%d/status' % pid).read().splitlines() if ':' in l)
print('uids', os.getuid() != int(status(sup)['Uid'].split()[0]), os.getuid() != int(status(1)['Uid'].split()[0]))
for target in (sup, 1):
    for sig in (signal.SIGKILL, signal.SIGSTOP, signal.SIGTERM):
        try:
            os.kill(target, sig)
            print('signalled', target, sig)
        except PermissionError:
            pass
ctypes.set_errno(0)
print('ptrace', libc.ptrace(16, sup, None, None), errno.errorcode.get(ctypes.get_errno()))  # PTRACE_ATTACH
ctypes.set_errno(0)
print('seize', libc.ptrace(0x4206, sup, None, None), errno.errorcode.get(ctypes.get_errno()))
for name in ['mem', 'syscall'] + ['fd/%d' % n for n in range(64)]:
    try:
        with open('/proc/%d/%s' % (sup, name), 'rb') as f:
            # The control channel's pipes are what matter; /dev/null is everyone's.
            if not os.path.samestat(os.fstat(f.fileno()), os.stat('/dev/null')):
                f.read(1)
                print('read', name)
    except OSError:
        pass
print('caps', status(os.getpid())['CapBnd'].strip(), status(os.getpid())['CapPrm'].strip())
if os.fork() == 0:
    # A daemon that kills whatever starts after it.
    os.setsid()
    import time
    known = set(os.listdir('/proc'))
    end = time.time() + 5
    while time.time() < end:
        for p in set(os.listdir('/proc')) - known:
            if p.isdigit():
                try:
                    os.kill(int(p), 9)
                except OSError:
                    pass
        known = set(os.listdir('/proc'))
    os._exit(0)
print('done', kept)
"#,
    )
    .await;
    let out = ok(&r);
    assert!(out.contains("uids True True"), "{out}");
    assert!(!out.contains("signalled"), "{out}");
    assert!(!out.contains("read "), "{out}");
    assert!(out.contains("ptrace -1 EPERM"), "{out}");
    assert!(out.contains("seize -1 EPERM"), "{out}");
    assert!(
        out.contains("caps 0000000000000000 0000000000000000"),
        "{out}"
    );
    assert!(out.contains("done 1"), "{out}");
    // The daemon kills what user code starts, not the agent: runs go on, state kept.
    for _ in 0..3 {
        let r = run(s.as_ref(), "print(kept)").await;
        assert_eq!(ok(&r), "1\n", "{}", r.to_json());
    }
    s.close().await.unwrap();
}
