//! `biocage repl`: an interactive session for people, or a JSON-lines program interface.

use std::io::Write;

use biocage_core::{InputStatus, PoolOptions, RunEvent, RunOptions, Session, SessionPool};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::args::{Cli, SessionOpts};
use crate::exit::{CliError, OK};
use crate::inert::Stream;
use crate::run::print_after_live;
use crate::{config, engine, progress};

/// One request of the JSON interface.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    timeout: Option<f64>,
    /// Send output as it comes, one event per line, before the result.
    #[serde(default)]
    stream: bool,
    /// A fresh interpreter (from the pool: a fresh sandbox) instead of running code.
    #[serde(default)]
    reset: bool,
}

/// Runs the session until end of input; closes it (removing the container) then.
pub(crate) async fn repl(
    cli: &Cli,
    pool: Option<usize>,
    opts: &SessionOpts,
) -> Result<i32, CliError> {
    let config = config::build(opts)?;
    let rt: std::sync::Arc<dyn biocage_core::SandboxRuntime> =
        std::sync::Arc::from(engine::connect(cli.runtime).await?);
    let spinner = progress::spinner(cli, "starting the sandbox");
    let pool = match pool {
        Some(n) if n > 0 => {
            Some(SessionPool::new(rt.clone(), config.clone(), PoolOptions::new(n)).await?)
        }
        _ => None,
    };
    let session = match &pool {
        Some(p) => p.acquire().await?,
        None => rt.create_session(&config).await?,
    };
    spinner.finish_and_clear();
    let (session, outcome) = if cli.json {
        json_loop(session, pool.as_ref()).await
    } else {
        let outcome = human_loop(session.as_ref(), rt.name()).await;
        (session, outcome)
    };
    if let Err(e) = session.close().await {
        tracing::warn!("closing the sandbox: {e}");
    }
    if let Some(p) = pool {
        p.shutdown().await;
    }
    outcome.map(|()| OK)
}

fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The JSON interface: requests in, results (and, for streamed runs, events) out, in
/// order. Returns the session in use at the end (a reset may have replaced it).
async fn json_loop(
    mut session: Box<dyn Session>,
    pool: Option<&SessionPool>,
) -> (Box<dyn Session>, Result<(), CliError>) {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut n = 0u64;
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => return (session, Ok(())),
            Err(e) => {
                return (
                    session,
                    Err(CliError::usage(format!("cannot read standard input: {e}"))),
                )
            }
        };
        n += 1;
        if line.trim().is_empty() {
            continue;
        }
        let req = match serde_json::from_str::<Request>(&line) {
            Ok(req) if req.code.is_some() || req.reset => req,
            Ok(_) | Err(_) => {
                emit(&serde_json::json!({
                    "error": format!("line {n} is not a request; send {{\"code\": \"...\", \"timeout\": 5, \"stream\": false}} or {{\"reset\": true}}"),
                }).to_string());
                continue;
            }
        };
        if req.reset {
            let outcome = match pool {
                Some(p) => match p.acquire().await {
                    Ok(fresh) => {
                        let old = std::mem::replace(&mut session, fresh);
                        tokio::spawn(async move {
                            if let Err(e) = old.close().await {
                                tracing::warn!("closing a used sandbox: {e}");
                            }
                        });
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
                None => session.restart().await,
            };
            emit(
                &match outcome {
                    Ok(()) => serde_json::json!({"reset": true, "session_id": session.id()}),
                    Err(e) => serde_json::json!({"error": e.to_string()}),
                }
                .to_string(),
            );
            continue;
        }
        let code = req.code.unwrap_or_default();
        let mut run = RunOptions::default();
        match req.timeout.map(biocage_core::config::timeout_from_secs) {
            Some(Err(e)) => {
                emit(&serde_json::json!({"error": e.to_string()}).to_string());
                continue;
            }
            Some(Ok(t)) => run = run.timeout(t),
            None => {}
        }
        let result = if req.stream {
            let (tx, mut rx) = tokio::sync::mpsc::channel(256);
            let printer = tokio::spawn(async move {
                while let Some(event) = rx.recv().await {
                    emit(&event_json(&event).to_string());
                }
            });
            let result = session.run_streaming(&code, &run, tx).await;
            let _ = printer.await;
            result
        } else {
            session.run_with(&code, &run).await
        };
        emit(&match result {
            Ok(r) => r.to_json(),
            Err(e) => serde_json::json!({"error": e.to_string()}).to_string(),
        });
    }
}

/// One streamed event as a JSON line of `repl --json`.
pub(crate) fn event_json(event: &RunEvent) -> serde_json::Value {
    match event {
        RunEvent::Stdout(text) => serde_json::json!({"event": "stdout", "data": text}),
        RunEvent::Stderr(text) => serde_json::json!({"event": "stderr", "data": text}),
        RunEvent::Display(bundle) => serde_json::json!({"event": "display", "data": bundle}),
        _ => serde_json::json!({"event": "other"}),
    }
}

/// Where the human REPL keeps its history: `$XDG_DATA_HOME/biocage/history`, else
/// `~/.local/share/biocage/history`.
fn history_path() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".local/share"))
        })?;
    Some(base.join("biocage").join("history"))
}

async fn human_loop(session: &dyn Session, engine: &str) -> Result<(), CliError> {
    eprintln!(
        "BioCage {} on {engine}. State persists between inputs; Ctrl-C interrupts a run, Ctrl-D ends the session.",
        env!("CARGO_PKG_VERSION")
    );
    let mut input = if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        Input::Editor(LineEditor::start(history_path()))
    } else {
        Input::Plain(BufReader::new(tokio::io::stdin()).lines())
    };
    // Lines of the statement being typed; Python's codeop (in the sandbox) decides when
    // it is complete, as Python's own REPL does.
    let mut lines: Vec<String> = Vec::new();
    loop {
        let prompt = if lines.is_empty() { ">>> " } else { "... " };
        let line = match input.read(prompt, session).await? {
            Line::Text(line) => Some(line),
            Line::Interrupted => {
                eprintln!("KeyboardInterrupt");
                lines.clear();
                continue;
            }
            Line::End => None,
        };
        let at_end = line.is_none();
        match line {
            Some(line) => {
                let blank = line.trim().is_empty();
                if lines.is_empty() && blank {
                    continue;
                }
                lines.push(line);
                let source = lines.join("\n");
                let status = if blank {
                    InputStatus::Complete
                } else {
                    session.input_status(&source).await?
                };
                if status == InputStatus::Incomplete {
                    continue;
                }
            }
            // End of input: what is still buffered runs before the session ends.
            None => eprintln!(),
        }
        let code = std::mem::take(&mut lines).join("\n");
        if at_end && code.trim().is_empty() {
            return Ok(());
        }
        if code.trim().is_empty() {
            continue;
        }
        input.add_history(&code);
        let live = crate::run::Live::start();
        let plain = RunOptions::default();
        let run = session.run_streaming(&code, &plain, live.sender());
        tokio::pin!(run);
        let result = loop {
            tokio::select! {
                r = &mut run => break r,
                _ = tokio::signal::ctrl_c() => {
                    if let Err(e) = session.interrupt().await {
                        eprintln!(
                            "biocage: could not interrupt: {}",
                            Stream::Stderr.show(&e.to_string())
                        );
                    }
                }
            }
        };
        let shown = live.finish().await;
        match result {
            Ok(r) => {
                print_after_live(&r, &shown);
                if let Some(v) = &r.value {
                    println!("{}", Stream::Stdout.show(v));
                }
                if !r.images.is_empty() {
                    eprintln!(
                        "biocage: {} figure(s) returned as PNG; `biocage --json repl` hands them over",
                        r.images.len()
                    );
                }
                if r.state_lost {
                    eprintln!("biocage: the interpreter was replaced; earlier state is gone");
                }
            }
            Err(e) => eprintln!("biocage: {}", Stream::Stderr.show(&e.to_string())),
        }
        if at_end {
            return Ok(());
        }
    }
}

/// One read from the terminal.
enum Line {
    Text(String),
    Interrupted,
    End,
}

/// Where the human REPL's lines come from: a line editor on a terminal, plain lines
/// otherwise (pipes, files).
enum Input {
    Editor(LineEditor),
    Plain(tokio::io::Lines<BufReader<tokio::io::Stdin>>),
}

impl Input {
    async fn read(&mut self, prompt: &str, session: &dyn Session) -> Result<Line, CliError> {
        match self {
            Input::Editor(editor) => editor.read(prompt, session).await,
            Input::Plain(lines) => {
                eprint!("{prompt}");
                tokio::select! {
                    line = lines.next_line() => Ok(match line.map_err(|e| CliError::usage(format!("cannot read standard input: {e}")))? {
                        Some(l) => Line::Text(l),
                        None => Line::End,
                    }),
                    _ = tokio::signal::ctrl_c() => Ok(Line::Interrupted),
                }
            }
        }
    }

    fn add_history(&mut self, code: &str) {
        if let Input::Editor(editor) = self {
            let _ = editor
                .commands
                .send(EditorCommand::History(code.to_string()));
        }
    }
}

/// A request to the completer's owner: the text before the cursor, and where to answer.
type CompletionRequest = (String, std::sync::mpsc::Sender<Vec<String>>);

enum EditorCommand {
    Read(String),
    History(String),
}

/// rustyline on a thread of its own (it blocks), with history kept across sessions and
/// tab completion of names in the sandbox's live namespace.
struct LineEditor {
    commands: std::sync::mpsc::Sender<EditorCommand>,
    lines: tokio::sync::mpsc::UnboundedReceiver<Line>,
    completions: tokio::sync::mpsc::UnboundedReceiver<CompletionRequest>,
}

impl LineEditor {
    fn start(history: Option<std::path::PathBuf>) -> Self {
        let (commands, command_rx) = std::sync::mpsc::channel::<EditorCommand>();
        let (line_tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let (completion_tx, completions) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let Ok(mut editor) =
                rustyline::Editor::<SandboxNames, rustyline::history::FileHistory>::new()
            else {
                let _ = line_tx.send(Line::End);
                return;
            };
            editor.set_helper(Some(SandboxNames { ask: completion_tx }));
            if let Some(path) = &history {
                let _ = editor.load_history(path);
            }
            while let Ok(command) = command_rx.recv() {
                match command {
                    EditorCommand::History(entry) => {
                        let _ = editor.add_history_entry(entry);
                        if let Some(path) = &history {
                            if let Some(dir) = path.parent() {
                                let _ = std::fs::create_dir_all(dir);
                            }
                            let _ = editor.save_history(path);
                        }
                    }
                    EditorCommand::Read(prompt) => {
                        let line = match editor.readline(&prompt) {
                            Ok(l) => Line::Text(l),
                            Err(rustyline::error::ReadlineError::Interrupted) => Line::Interrupted,
                            Err(_) => Line::End,
                        };
                        if line_tx.send(line).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        LineEditor {
            commands,
            lines,
            completions,
        }
    }

    async fn read(&mut self, prompt: &str, session: &dyn Session) -> Result<Line, CliError> {
        if self
            .commands
            .send(EditorCommand::Read(prompt.to_string()))
            .is_err()
        {
            return Ok(Line::End);
        }
        loop {
            tokio::select! {
                line = self.lines.recv() => return Ok(line.unwrap_or(Line::End)),
                Some((text, answer)) = self.completions.recv() => {
                    let names = session.complete(&text).await.unwrap_or_default();
                    let _ = answer.send(names);
                }
            }
        }
    }
}

/// rustyline's helper: completes the dotted name before the cursor from the sandbox.
struct SandboxNames {
    ask: tokio::sync::mpsc::UnboundedSender<CompletionRequest>,
}

impl rustyline::completion::Completer for SandboxNames {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        let head = &line[..pos];
        let start = head
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
            .map_or(0, |i| i + 1);
        let word = &head[start..];
        if word.is_empty() {
            // A tab at the start of a line indents, as in Python's REPL.
            return Ok((pos, vec!["    ".to_string()]));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        if self.ask.send((word.to_string(), tx)).is_err() {
            return Ok((start, Vec::new()));
        }
        let names = rx
            .recv_timeout(std::time::Duration::from_secs(3))
            .unwrap_or_default()
            .into_iter()
            // Names come from sandbox code (__dir__ can return anything): only plain
            // identifiers reach the terminal.
            .filter(|n| n.chars().all(|c| c.is_alphanumeric() || "._(".contains(c)))
            .collect();
        Ok((start, names))
    }
}

impl rustyline::hint::Hinter for SandboxNames {
    type Hint = String;
}
impl rustyline::highlight::Highlighter for SandboxNames {}
impl rustyline::validate::Validator for SandboxNames {}
impl rustyline::Helper for SandboxNames {}
