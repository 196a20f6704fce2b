//! `biocage repl`: an interactive session for people, or a JSON-lines program interface.

use std::io::Write;

use biocage_core::Session;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::args::{Cli, SessionOpts};
use crate::exit::{CliError, OK};
use crate::inert::Stream;
use crate::run::print_result;
use crate::{config, engine, progress};

/// One request of the JSON interface.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    code: String,
    #[serde(default)]
    timeout: Option<f64>,
}

/// Runs the session until end of input; closes it (removing the container) then.
pub async fn repl(cli: &Cli, opts: &SessionOpts) -> Result<i32, CliError> {
    let config = config::build(opts)?;
    let rt = engine::connect(cli.runtime).await?;
    let spinner = progress::spinner(cli, "starting the sandbox");
    let session = rt.create_session(&config).await?;
    spinner.finish_and_clear();
    let outcome = if cli.json {
        json_loop(session.as_ref()).await
    } else {
        human_loop(session.as_ref(), rt.name()).await
    };
    if let Err(e) = session.close().await {
        tracing::warn!("closing the sandbox: {e}");
    }
    outcome.map(|()| OK)
}

async fn json_loop(session: &dyn Session) -> Result<(), CliError> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut n = 0u64;
    while let Some(line) = lines
        .next_line()
        .await
        .map_err(|e| CliError::usage(format!("cannot read standard input: {e}")))?
    {
        n += 1;
        if line.trim().is_empty() {
            continue;
        }
        let reply = match serde_json::from_str::<Request>(&line) {
            Err(e) => serde_json::json!({
                "error": format!("line {n} is not a request: {e}; send {{\"code\": \"...\", \"timeout\": 5}}"),
            })
            .to_string(),
            Ok(req) => {
                let result = match req.timeout.map(biocage_core::config::timeout_from_secs) {
                    Some(Err(e)) => Err(e),
                    Some(Ok(t)) => session.run_with_timeout(&req.code, t).await,
                    None => session.run(&req.code).await,
                };
                match result {
                    Ok(r) => r.to_json(),
                    Err(e) => serde_json::json!({"error": e.to_string()}).to_string(),
                }
            }
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{reply}");
        let _ = out.flush();
    }
    Ok(())
}

/// True while `buffer` is an unfinished block: open brackets or strings, a trailing
/// backslash, or an indented block not yet ended by an empty line. Brackets, quotes and
/// colons inside strings and comments do not count.
fn needs_more(buffer: &str) -> bool {
    let mut depth = 0i32;
    let mut quote: Option<&str> = None;
    let mut block = false;
    let mut rest = buffer;
    while let Some(c) = rest.chars().next() {
        if let Some(q) = quote {
            if rest.starts_with('\\') {
                rest = rest.get(2..).unwrap_or("");
                continue;
            }
            if rest.starts_with(q) {
                rest = &rest[q.len()..];
                quote = None;
                continue;
            }
            if c == '\n' && q.len() == 1 {
                quote = None; // an unclosed one-line string: Python will say so
            }
        } else if let Some(q) = ["\"\"\"", "\'\'\'", "\"", "'"]
            .into_iter()
            .find(|q| rest.starts_with(q))
        {
            quote = Some(q);
            rest = &rest[q.len()..];
            continue;
        } else if c == '#' {
            rest = rest.find('\n').map_or("", |i| &rest[i..]);
            continue;
        } else {
            match c {
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => depth -= 1,
                _ => {}
            }
        }
        rest = &rest[c.len_utf8()..];
    }
    for line in buffer.lines() {
        let code = line.split('#').next().unwrap_or("").trim_end();
        if code.ends_with(':') {
            block = true;
        }
    }
    let last = buffer.lines().last().unwrap_or("").trim_end();
    quote.is_some() || depth > 0 || last.ends_with('\\') || (block && !buffer.ends_with("\n\n"))
}

async fn human_loop(session: &dyn Session, engine: &str) -> Result<(), CliError> {
    eprintln!(
        "BioCage {} on {engine}. State persists between inputs; Ctrl-C interrupts a run, Ctrl-D ends the session.",
        env!("CARGO_PKG_VERSION")
    );
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut buffer = String::new();
    loop {
        eprint!("{}", if buffer.is_empty() { ">>> " } else { "... " });
        let line = tokio::select! {
            line = lines.next_line() => line.map_err(|e| CliError::usage(format!("cannot read standard input: {e}")))?,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("\nKeyboardInterrupt");
                buffer.clear();
                continue;
            }
        };
        let at_end = line.is_none();
        match line {
            Some(line) => {
                buffer.push_str(&line);
                buffer.push('\n');
                if needs_more(&buffer) {
                    continue;
                }
            }
            // End of input: what is still buffered runs before the session ends.
            None => eprintln!(),
        }
        let code = std::mem::take(&mut buffer);
        if at_end && code.trim().is_empty() {
            return Ok(());
        }
        if code.trim().is_empty() {
            continue;
        }
        let run = session.run(&code);
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
        match result {
            Ok(r) => {
                print_result(&r, false);
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

#[cfg(test)]
mod tests {
    use super::needs_more;

    #[test]
    fn blocks_continue_until_an_empty_line() {
        assert!(!needs_more("x = 1\n"));
        assert!(needs_more("def f():\n"));
        assert!(needs_more("def f():\n    return 1\n"));
        assert!(!needs_more("def f():\n    return 1\n\n"));
        assert!(needs_more("x = (1,\n"));
        assert!(!needs_more("x = (1,\n2)\n"));
        assert!(needs_more("s = \"\"\"a\n"));
        assert!(needs_more("x = 1 + \\\n"));
        assert!(!needs_more("print(\"(\")\n"));
        assert!(!needs_more("s = '[x'\n"));
        assert!(!needs_more("x = 1  # note:\n"));
        assert!(!needs_more("d = {'a': 1}\n"));
    }
}
