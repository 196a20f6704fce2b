//! Output capture at the file-descriptor level: separate, capped, never on the
//! control channel.

use biocage_core::{SandboxRuntime, Session};

use crate::harness::{config_builder, ok, run};

/// print, os.write, os.system, subprocess and C-level writes land in the right stream.
pub async fn captures_every_writer(rt: &dyn SandboxRuntime) {
    let s = crate::harness::session(rt).await;
    let code = r#"
import os, sys, subprocess, ctypes
print("p-out")
print("p-err", file=sys.stderr)
os.write(1, b"fd-out\n")
os.write(2, b"fd-err\n")
os.system("echo sh-out; echo sh-err 1>&2")
subprocess.run(["python3", "-c", "import sys; print('sub-out'); print('sub-err', file=sys.stderr)"])
libc = ctypes.CDLL(None)
libc.write(1, b"c-out\n", 6)
libc.write(2, b"c-err\n", 6)
"#;
    let r = run(s.as_ref(), code).await;
    let out = ok(&r).to_string();
    for want in ["p-out", "fd-out", "sh-out", "sub-out", "c-out"] {
        assert!(out.contains(want), "stdout lacks {want}: {out:?}");
    }
    for want in ["p-err", "fd-err", "sh-err", "sub-err", "c-err"] {
        assert!(
            r.stderr.contains(want),
            "stderr lacks {want}: {:?}",
            r.stderr
        );
        assert!(!out.contains(want), "{want} leaked into stdout");
    }
    s.close().await.unwrap();
}

/// Output over the cap is cut, flagged, and the session goes on.
pub async fn output_is_capped(rt: &dyn SandboxRuntime) {
    let config = config_builder(rt).await.output_cap(4096).build().unwrap();
    let s = rt.create_session(&config).await.unwrap();
    let r = run(
        s.as_ref(),
        "import sys\nprint('x' * 100000)\nsys.stderr.write('e' * 50000)\nprint('after')",
    )
    .await;
    ok(&r);
    assert_eq!(r.stdout.len(), 4096);
    assert!(r.stdout_truncated && r.stderr_truncated);
    assert_eq!(r.stderr.len(), 4096);
    let r = run(s.as_ref(), "print('small')").await;
    assert_eq!(ok(&r), "small\n");
    assert!(!r.stdout_truncated);
    s.close().await.unwrap();
}

/// Output that imitates the protocol, and invalid UTF-8, change nothing.
pub async fn protocol_lookalikes_are_plain_output(rt: &dyn SandboxRuntime) {
    let s = crate::harness::session(rt).await;
    let fake = r#"{"op": "result", "id": 1, "success": true, "stdout": "forged", "exit_code": 0}"#;
    let code = format!(
        "import os\nprint({fake:?})\nos.write(1, b'\\xff\\xfe\\n')\nos.write(2, {fake:?}.encode() + b'\\n')\nraise ValueError('real')"
    );
    let r = run(s.as_ref(), &code).await;
    assert!(!r.success, "{}", r.to_json());
    assert_eq!(r.exit_code, 1);
    assert!(r.stdout.contains("forged"), "the lookalike is plain output");
    assert!(r.stdout.contains('\u{fffd}'), "invalid UTF-8 is replaced");
    assert_eq!(
        r.error.as_ref().unwrap().name.as_deref(),
        Some("ValueError")
    );
    let r = run(s.as_ref(), "print('next')").await;
    assert_eq!(ok(&r), "next\n");
    s.close().await.unwrap();
}

/// A background thread printing between runs never shows up in the wrong run: output
/// produced while no run is in progress is dropped (documented behaviour).
pub async fn background_output_is_not_misattributed(rt: &dyn SandboxRuntime) {
    let s = crate::harness::session(rt).await;
    let code = "import threading, time\ndef noisy():\n    time.sleep(0.3)\n    print('LATE', flush=True)\nthreading.Thread(target=noisy, daemon=True).start()\nprint('early')";
    let r = run(s.as_ref(), code).await;
    assert_eq!(ok(&r), "early\n");
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let r = run(s.as_ref(), "print('second')").await;
    assert_eq!(
        ok(&r),
        "second\n",
        "output from between runs must not be attributed"
    );
    close(s).await;
}

async fn close(s: Box<dyn Session>) {
    s.close().await.unwrap();
}
