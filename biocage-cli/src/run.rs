//! `biocage run`: one-shot execution.

use std::io::{Read, Write};
use std::path::PathBuf;

use biocage_core::ExecutionResult;

use crate::args::{Cli, SessionOpts};
use crate::exit::CliError;
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

/// Prints a result as the user asked: JSON, or stdout/stderr as they are.
pub fn print_result(r: &ExecutionResult, json: bool) {
    let mut out = std::io::stdout().lock();
    if json {
        let _ = writeln!(out, "{}", r.to_json());
    } else {
        let _ = out.write_all(r.stdout.as_bytes());
        let _ = out.flush();
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(r.stderr.as_bytes());
        // A traceback says it all for an exception; timeouts, out-of-memory and crashes
        // also get a line saying what happened.
        if let Some(e) = r
            .error
            .as_ref()
            .filter(|e| e.traceback.is_none() || e.kind != biocage_core::ErrorKind::Exception)
        {
            let _ = writeln!(
                err,
                "biocage: {}: {}",
                serde_json::to_value(e.kind)
                    .unwrap_or_default()
                    .as_str()
                    .unwrap_or("error"),
                e.message
            );
        }
        if r.stdout_truncated || r.stderr_truncated {
            let _ = writeln!(err, "biocage: output was over the cap and was cut");
        }
    }
}

/// Runs the code once; the exit code is the result's.
pub async fn run(cli: &Cli, file: Option<&PathBuf>, opts: &SessionOpts) -> Result<i32, CliError> {
    let code = read_code(file)?;
    let config = config::build(opts)?;
    let rt = engine::connect(cli.runtime).await?;
    let spinner = progress::spinner(cli, "starting the sandbox");
    let session = rt.create_session(&config).await?;
    spinner.finish_and_clear();
    let result = session.run(&code).await;
    if let Err(e) = session.close().await {
        tracing::warn!("closing the sandbox: {e}");
    }
    let result = result?;
    print_result(&result, cli.json);
    Ok(result.exit_code)
}
