//! `biocage run`: one-shot execution.

use std::io::{Read, Write};
use std::path::PathBuf;

use biocage_core::{ExecutionResult, RunEvent, RunOptions};

/// Where scripts are copied in the sandbox (the default workspace).
fn opts_workspace() -> String {
    biocage_core::SandboxConfig::default().workspace
}

use crate::args::{Cli, SessionOpts};
use crate::exit::CliError;
use crate::inert::{self, Stream};
use crate::{config, engine, progress};

/// Reads the code from FILE, or stdin for `-` or no file.
fn read_code(file: Option<&PathBuf>) -> Result<String, CliError> {
    match file {
        Some(path) if path.as_os_str() != "-" => std::fs::read_to_string(path).map_err(|e| {
            CliError::usage(format!(
                "cannot read {}: {e}; give a readable Python file, or - to read standard input",
                path.display()
            ))
        }),
        _ => {
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprintln!("biocage: reading Python code from standard input; end it with Ctrl-D");
            }
            let mut code = String::new();
            std::io::stdin()
                .read_to_string(&mut code)
                .map_err(|e| CliError::usage(format!("cannot read standard input: {e}")))?;
            Ok(code)
        }
    }
}

/// Prints a result as the user asked: JSON, or stdout/stderr as they are (shown inertly
/// on a terminal, see [`inert`]).
pub(crate) fn print_result(r: &ExecutionResult, json: bool) {
    if json {
        let _ = writeln!(std::io::stdout().lock(), "{}", r.to_json());
        return;
    }
    let out_tty = Stream::Stdout.is_terminal();
    let err_tty = Stream::Stderr.is_terminal();
    write_human(
        r,
        &mut std::io::stdout().lock(),
        out_tty,
        &mut std::io::stderr().lock(),
        err_tty,
    );
}

/// What a [`Live`] printer showed while the run went on.
#[derive(Debug, Default)]
pub(crate) struct Shown {
    /// stdout shown so far.
    pub stdout: String,
    /// stderr shown so far.
    pub stderr: String,
}

/// Prints a run's output on the terminal as it comes (see `Session::run_streaming`).
pub(crate) struct Live {
    tx: tokio::sync::mpsc::Sender<RunEvent>,
    printer: tokio::task::JoinHandle<Shown>,
}

impl Live {
    /// A printer writing stdout and stderr events to the CLI's own streams, inertly on
    /// a terminal.
    pub(crate) fn start() -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<RunEvent>(1024);
        let printer = tokio::spawn(async move {
            let mut shown = Shown::default();
            while let Some(event) = rx.recv().await {
                match event {
                    RunEvent::Stdout(text) => {
                        let mut out = std::io::stdout().lock();
                        let _ = out.write_all(Stream::Stdout.show(&text).as_bytes());
                        let _ = out.flush();
                        shown.stdout.push_str(&text);
                    }
                    RunEvent::Stderr(text) => {
                        let _ = std::io::stderr()
                            .lock()
                            .write_all(Stream::Stderr.show(&text).as_bytes());
                        shown.stderr.push_str(&text);
                    }
                    _ => {}
                }
            }
            shown
        });
        Live { tx, printer }
    }

    /// Where the run sends its events.
    pub(crate) fn sender(&self) -> tokio::sync::mpsc::Sender<RunEvent> {
        self.tx.clone()
    }

    /// Waits for the events still queued; returns what was shown.
    pub(crate) async fn finish(self) -> Shown {
        drop(self.tx);
        self.printer.await.unwrap_or_default()
    }
}

/// Prints what a live-printed run has left to say: output not yet shown (events that
/// were dropped, or held back at a split character) and what went wrong.
pub(crate) fn print_after_live(r: &ExecutionResult, shown: &Shown) {
    let rest = |all: &str, seen: &str| -> String {
        all.strip_prefix(seen).unwrap_or_default().to_string()
    };
    let mut rest_of = r.clone();
    rest_of.stdout = rest(&r.stdout, &shown.stdout);
    rest_of.stderr = rest(&r.stderr, &shown.stderr);
    print_result(&rest_of, false);
}

/// The human form of a result: its stdout on `out`, then its stderr and what went wrong
/// on `err`. Text from the sandbox is [`inert::show`]n for a stream flagged as a terminal.
fn write_human(
    r: &ExecutionResult,
    out: &mut dyn Write,
    out_tty: bool,
    err: &mut dyn Write,
    err_tty: bool,
) {
    let _ = out.write_all(inert::show(&r.stdout, out_tty).as_bytes());
    let _ = out.flush();
    let _ = err.write_all(inert::show(&r.stderr, err_tty).as_bytes());
    // A traceback says it all for an exception; timeouts, out-of-memory and crashes
    // also get a line saying what happened.
    // sys.exit(n) says nothing more, as `python` does.
    if let Some(e) = r.error.as_ref().filter(|e| {
        (e.traceback.is_none() || e.kind != biocage_core::ErrorKind::Exception)
            && e.kind != biocage_core::ErrorKind::Exit
    }) {
        let _ = writeln!(
            err,
            "biocage: {}: {}",
            serde_json::to_value(e.kind)
                .unwrap_or_default()
                .as_str()
                .unwrap_or("error"),
            inert::show(&e.message, err_tty)
        );
    }
    if r.stdout_truncated || r.stderr_truncated {
        let _ = writeln!(err, "biocage: output was over the cap and was cut");
    }
}

/// Runs the code once; the exit code is the result's (a script's own `sys.exit` status
/// too). A file runs as `python FILE ARGS...` would: it is copied into the workspace and
/// run there with `sys.argv`, `__file__` and `sys.path[0]` set.
pub(crate) async fn run(
    cli: &Cli,
    file: Option<&PathBuf>,
    args: &[String],
    opts: &SessionOpts,
) -> Result<i32, CliError> {
    let code = read_code(file)?;
    let script = file.filter(|p| p.as_os_str() != "-").map(|p| {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "script.py".into());
        format!("{}/{name}", opts_workspace())
    });
    let config = config::build(opts)?;
    let rt = engine::connect(cli.runtime).await?;
    let spinner = progress::spinner(cli, "starting the sandbox");
    let session = rt.create_session(&config).await?;
    spinner.finish_and_clear();
    // Human output is printed as it comes; --json prints the one result at the end.
    let live = (!cli.json).then(Live::start);
    let run_opts = match &script {
        Some(path) => RunOptions::default().script(path.clone(), args.to_vec()),
        None => RunOptions::default(),
    };
    let go = || async {
        match &live {
            Some(l) => session.run_streaming(&code, &run_opts, l.sender()).await,
            None => session.run_with(&code, &run_opts).await,
        }
    };
    let result = match &script {
        Some(path) => match session.write_file(path, code.as_bytes()).await {
            Ok(()) => go().await,
            Err(e) => Err(e),
        },
        None if !args.is_empty() => Err(biocage_core::Error::InvalidConfig {
            field: "arguments",
            value: args.join(" "),
            reason: "arguments after -- need a script file: biocage run job.py -- ARGS".into(),
        }),
        None => go().await,
    };
    let shown = match live {
        Some(l) => Some(l.finish().await),
        None => None,
    };
    if let Err(e) = session.close().await {
        tracing::warn!("closing the sandbox: {e}");
    }
    let result = result?;
    match &shown {
        Some(shown) => print_after_live(&result, shown),
        None => print_result(&result, cli.json),
    }
    Ok(result.exit_code)
}

#[cfg(test)]
mod tests {
    use super::write_human;
    use biocage_core::{ErrorKind, ExecutionResult};

    /// A result with control characters in every text the human form prints.
    fn hostile() -> ExecutionResult {
        let mut r = ExecutionResult::sandbox_failure("killed \x1b]0;t\x07\u{9b}", false);
        r.stdout = "\x1b]52;c;eA==\x07\x1b[2J\tok\n".into();
        r.stderr = "\x1b[31m\u{202e}err\r\n".into();
        if let Some(e) = r.error.as_mut() {
            e.kind = ErrorKind::Crashed;
        }
        r
    }

    fn human(r: &ExecutionResult, out_tty: bool, err_tty: bool) -> (String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        write_human(r, &mut out, out_tty, &mut err, err_tty);
        (
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn a_terminal_gets_every_sandbox_text_inertly() {
        let (out, err) = human(&hostile(), true, true);
        assert_eq!(out, "\\x1b]52;c;eA==\\x07\\x1b[2J\tok\n");
        assert_eq!(
            err,
            "\\x1b[31m\\u202eerr\\x0d\nbiocage: crashed: killed \\x1b]0;t\\x07\\x9b\n"
        );
    }

    #[test]
    fn pipes_get_the_sandbox_text_byte_for_byte() {
        let r = hostile();
        let (out, err) = human(&r, false, false);
        assert_eq!(out, r.stdout);
        assert_eq!(
            err,
            format!("{}biocage: crashed: killed \x1b]0;t\x07\u{9b}\n", r.stderr)
        );
        // Each stream on its own.
        let (out, err) = human(&r, false, true);
        assert_eq!(out, r.stdout);
        assert!(err.starts_with("\\x1b[31m"));
        let (out, err) = human(&r, true, false);
        assert!(out.starts_with("\\x1b]52"));
        assert!(err.starts_with(&r.stderr));
    }
}
