//! Exceptions: type, message, a traceback of the user's code, output kept, state kept.

use biocage_core::{ErrorKind, SandboxRuntime};

use crate::harness::{ok, run, session};

/// The reference's "Error Handling" scenario: errors are recognisable from stderr.
pub async fn seed_error_handling(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    let r = run(s.as_ref(), "print('Hello World!')").await;
    assert_eq!(ok(&r).trim(), "Hello World!");
    for (code, needle, name) in [
        ("print(undefined_var)", "nameerror", "NameError"),
        (
            "import nonexistent_module",
            "modulenotfounderror",
            "ModuleNotFoundError",
        ),
        ("print('unclosed'", "syntaxerror", "SyntaxError"),
    ] {
        let r = run(s.as_ref(), code).await;
        assert!(!r.success, "{code}");
        assert_eq!(r.exit_code, 1);
        assert!(
            r.stderr.to_lowercase().contains(needle),
            "{code}: {:?}",
            r.stderr
        );
        let e = r.error.as_ref().unwrap();
        assert_eq!(e.kind, ErrorKind::Exception);
        assert_eq!(e.name.as_deref(), Some(name));
        assert!(!r.state_lost);
    }
    s.close().await.unwrap();
}

/// The traceback shows the user's frames and lines, not the agent's; output printed
/// before the exception is kept; state survives.
pub async fn traceback_shows_user_code(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    ok(&run(s.as_ref(), "def inner():\n    return 1 / 0\nkept = 'yes'").await);
    let r = run(
        s.as_ref(),
        "print('before')\ndef outer():\n    inner()\nouter()",
    )
    .await;
    assert_eq!(r.stdout, "before\n");
    let e = r.error.as_ref().unwrap();
    assert_eq!(e.name.as_deref(), Some("ZeroDivisionError"));
    assert_eq!(e.message, "division by zero");
    let tb = e.traceback.as_deref().unwrap();
    assert!(tb.contains("line 4, in <module>"), "{tb}");
    assert!(tb.contains("in outer") && tb.contains("in inner"), "{tb}");
    assert!(tb.contains("return 1 / 0"), "source lines shown: {tb}");
    assert!(
        !tb.contains("biocage") && !tb.contains("<string>"),
        "agent frames leak: {tb}"
    );
    assert!(r.stderr.contains("ZeroDivisionError"));
    assert_eq!(ok(&run(s.as_ref(), "print(kept)").await), "yes\n");
    s.close().await.unwrap();
}

/// A SyntaxError names its line and runs nothing of the cell.
pub async fn syntax_error_has_line(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    let r = run(s.as_ref(), "x = 1\ny = 2\nif x ==\n  pass").await;
    let e = r.error.as_ref().unwrap();
    assert_eq!(e.name.as_deref(), Some("SyntaxError"));
    assert_eq!(e.line, Some(3));
    let r = run(s.as_ref(), "print('x' in dir())").await;
    assert_eq!(
        ok(&r),
        "False\n",
        "nothing of a cell with a syntax error runs"
    );
    s.close().await.unwrap();
}

/// input() has no stdin: a clear EOFError at once, never a hang.
pub async fn input_gets_eof(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    let r = crate::harness::run_for(s.as_ref(), "name = input('who? ')", 10.0).await;
    let e = r.error.as_ref().unwrap();
    assert_eq!(e.name.as_deref(), Some("EOFError"));
    assert!(
        r.execution_time < 5.0,
        "input() must not wait: {}",
        r.execution_time
    );
    s.close().await.unwrap();
}
