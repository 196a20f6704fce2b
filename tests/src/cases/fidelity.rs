//! The session behaves like the Python models write for: `python -i` and notebook cells.

use biocage_core::{ErrorKind, RunOptions, SandboxRuntime};

use crate::harness::{ok, run, session};

/// The user namespace is the registered `__main__` module: pickle, process pools and
/// type hints find what earlier runs defined there (default pids and memory limits).
pub async fn main_module_is_registered(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    ok(&run(
        s.as_ref(),
        "def double(v):\n    return v * 2\nclass P:\n    pass\nclass Q:\n    a: 'P'",
    )
    .await);
    let r = run(
        s.as_ref(),
        r#"
import pickle, sys, typing, multiprocessing
from concurrent.futures import ProcessPoolExecutor
print(sys.modules['__main__'].double is double, __name__)
print(type(pickle.loads(pickle.dumps(P()))).__name__)
with multiprocessing.Pool(2) as pool:
    print(pool.map(double, [1, 2, 3]))
with ProcessPoolExecutor(2) as ex:
    print(list(ex.map(double, [4, 5])))
print(typing.get_type_hints(Q)['a'] is P)
"#,
    )
    .await;
    assert_eq!(
        ok(&r),
        "True __main__\nP\n[2, 4, 6]\n[8, 10]\nTrue\n",
        "{}",
        r.to_json()
    );
    s.close().await.unwrap();
}

/// Exceptions that break while being described are ordinary results, state kept.
pub async fn broken_exceptions_keep_state(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    ok(&run(s.as_ref(), "kept = 'yes'").await);
    let cases = [
        (
            "class E(Exception):\n    def __str__(self):\n        raise RuntimeError('no')\nraise E()",
            "E",
            "<exception str() failed>",
        ),
        (
            "raise ExceptionGroup('many', [ValueError('a'), TypeError('b')])",
            "ExceptionGroup",
            "many (2 sub-exceptions)",
        ),
        (
            "class C(Exception):\n    def __str__(self):\n        raise ValueError\ne = ValueError('top')\ne.__cause__ = C()\nraise e",
            "ValueError",
            "top",
        ),
        ("raise KeyboardInterrupt", "KeyboardInterrupt", ""),
    ];
    for (code, name, message) in cases {
        let r = run(s.as_ref(), code).await;
        let e = r.error.as_ref().unwrap();
        assert_eq!(e.kind, ErrorKind::Exception, "{code}: {}", r.to_json());
        assert_eq!(e.name.as_deref(), Some(name), "{code}");
        assert_eq!(e.message, message, "{code}");
        assert!(!r.state_lost, "{code}");
    }
    let r = run(s.as_ref(), "kept").await;
    assert_eq!(r.value.as_deref(), Some("'yes'"));
    s.close().await.unwrap();
}

/// sys.exit() ends the run, not the session: its status is the exit code.
pub async fn sys_exit_ends_the_run(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    ok(&run(s.as_ref(), "kept = 1").await);
    let r = run(s.as_ref(), "import sys\nprint('before')\nsys.exit()").await;
    assert_eq!(ok(&r), "before\n");
    assert!(!r.state_lost);
    let r = run(s.as_ref(), "import sys\nsys.exit(3)").await;
    assert!(!r.success);
    assert_eq!(r.exit_code, 3);
    assert_eq!(r.error_kind(), Some(ErrorKind::Exit));
    let r = run(s.as_ref(), "import sys\nsys.exit('bye')").await;
    assert_eq!(r.exit_code, 1);
    assert_eq!(r.stderr, "bye\n");
    let r = run(s.as_ref(), "kept").await;
    assert_eq!(r.value.as_deref(), Some("1"), "{}", r.to_json());
    assert!(!r.state_lost);
    s.close().await.unwrap();
}

/// Notebook habits: top-level await on a loop that persists, display() with rich forms,
/// the last value's rich forms, `_`.
pub async fn notebook_habits(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    let r = run(
        s.as_ref(),
        "import asyncio\nasync def later():\n    await asyncio.sleep(0.05)\n    return 42\ntask = asyncio.ensure_future(later())\nawait asyncio.sleep(0)",
    )
    .await;
    ok(&r);
    let r = run(s.as_ref(), "await task").await;
    assert_eq!(r.value.as_deref(), Some("42"), "{}", r.to_json());
    let r = run(
        s.as_ref(),
        r#"
import pandas as pd, matplotlib.pyplot as plt
class J:
    def _repr_json_(self):
        return {"k": [1, 2]}
    def __repr__(self):
        return 'J()'
display(pd.DataFrame({'a': [1, 2]}), J())
fig = plt.figure()
plt.plot([1, 2])
display(fig)
plt.close('all')
pd.DataFrame({'b': [3]})
"#,
    )
    .await;
    ok(&r);
    assert_eq!(r.displays.len(), 4, "{:?}", r.displays);
    assert!(r.displays[0]["text/html"].contains("<table"));
    assert_eq!(r.displays[1]["application/json"], "{\"k\": [1, 2]}");
    assert_eq!(r.displays[1]["text/plain"], "J()");
    assert!(r.displays[2].contains_key("image/png"));
    assert!(r.displays[3]["text/html"].contains("<table"));
    assert!(
        r.value.as_deref().unwrap().contains('b'),
        "value keeps the plain repr"
    );
    let r = run(s.as_ref(), "None").await;
    assert!(r.value.is_none());
    let r = run(s.as_ref(), "type(_).__name__").await;
    assert_eq!(
        r.value.as_deref(),
        Some("'DataFrame'"),
        "_ is the last value shown"
    );
    s.close().await.unwrap();
}

/// A script runs as `python job.py ARGS...`: argv, `__file__`, `sys.path[0]`, argparse, and
/// its exit status.
pub async fn scripts_run_as_python_runs_them(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    let code = "import argparse, os, sys\np = argparse.ArgumentParser()\np.add_argument('--n', type=int)\na = p.parse_args()\nprint(sys.argv, __file__, sys.path[0], a.n)\nsys.exit(a.n)";
    s.write_file("/workspace/job.py", code.as_bytes())
        .await
        .unwrap();
    let opts = RunOptions::default().script(
        "/workspace/job.py",
        vec!["--n".to_string(), "4".to_string()],
    );
    let r = s.run_with(code, &opts).await.unwrap();
    assert_eq!(
        r.stdout,
        "['job.py', '--n', '4'] /workspace/job.py /workspace 4\n",
        "{}",
        r.to_json()
    );
    assert_eq!(r.exit_code, 4);
    s.close().await.unwrap();
}

/// Error fields say exactly what Python prints: notes with the message; a SyntaxError's
/// message without the location, which goes to `line` and `offset`.
pub async fn error_fields_are_exact(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    let r = run(
        s.as_ref(),
        "e = ValueError('bad value')\ne.add_note('while loading x.csv')\nraise e",
    )
    .await;
    let e = r.error.as_ref().unwrap();
    assert_eq!(e.message, "bad value\nwhile loading x.csv");
    let r = run(s.as_ref(), "x = 1\ny = (2 +\n").await;
    let e = r.error.as_ref().unwrap();
    assert_eq!(e.name.as_deref(), Some("SyntaxError"));
    assert_eq!(e.message, "'(' was never closed");
    assert_eq!((e.line, e.offset), (Some(2), Some(5)), "{}", r.to_json());
    let status = s.input_status("for i in range(3):").await.unwrap();
    assert_eq!(status, biocage_core::InputStatus::Incomplete);
    let status = s.input_status("x = 1").await.unwrap();
    assert_eq!(status, biocage_core::InputStatus::Complete);
    let status = s.input_status("x = = 1").await.unwrap();
    assert_eq!(status, biocage_core::InputStatus::Invalid);
    ok(&run(s.as_ref(), "import collections\nmy_variable = 1").await);
    let names = s.complete("my_var").await.unwrap();
    assert_eq!(names, vec!["my_variable".to_string()]);
    let names = s.complete("collections.Ord").await.unwrap();
    assert_eq!(names, vec!["collections.OrderedDict(".to_string()]);
    s.close().await.unwrap();
}
