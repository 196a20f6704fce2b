//! `biocage mcp`: a Model Context Protocol server (biocage-mcp) over stdio, or over
//! streamable HTTP with a bearer token.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use biocage_mcp::{Backend, HttpOptions, ServeError, ServerOptions};

use crate::args::{Cli, SessionOpts};
use crate::exit::{CliError, FAILED, OK, UNAVAILABLE};
use crate::{config, engine};

/// The environment variable that holds the HTTP bearer token when no file is given.
const TOKEN_VAR: &str = "BIOCAGE_MCP_TOKEN";

/// `biocage mcp` options.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct McpArgs {
    /// Serve over streamable HTTP at ADDR (HOST:PORT, or a port on 127.0.0.1; default
    /// 127.0.0.1:8765) instead of stdio; the endpoint is http://ADDR/mcp.
    #[arg(
        long,
        value_name = "ADDR",
        num_args = 0..=1,
        default_missing_value = "127.0.0.1:8765"
    )]
    pub(crate) http: Option<String>,
    /// HTTP: a file holding the bearer token every request must carry
    /// (default: the BIOCAGE_MCP_TOKEN environment variable).
    #[arg(long, value_name = "FILE", requires = "http")]
    pub(crate) token_file: Option<PathBuf>,
    /// HTTP: listen on an address other than loopback (other hosts can then reach
    /// the sandboxes, with the token).
    #[arg(long, requires = "http")]
    pub(crate) allow_remote: bool,
    /// HTTP: close a client's session and sandbox after this many seconds without
    /// requests.
    #[arg(long, value_name = "SECONDS", default_value_t = 600.0)]
    pub(crate) idle_timeout: f64,
    /// HTTP: the most client sessions (each with a sandbox of its own) at once.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub(crate) max_sessions: usize,
    /// Keep N sandboxes started: a client's first call and reset_session get one at once.
    #[arg(long, value_name = "N")]
    pub(crate) pool: Option<usize>,
    /// The longest time limit (seconds) a client may ask for in one run_python call.
    #[arg(long, value_name = "SECONDS", default_value_t = 600.0)]
    pub(crate) max_timeout: f64,
    /// Sandbox settings, as for `biocage run`.
    #[command(flatten)]
    pub(crate) opts: SessionOpts,
}

fn serve_error(e: ServeError) -> CliError {
    match e {
        ServeError::Sandbox(e) => e.into(),
        ServeError::Options(message) => CliError::usage(message),
        ServeError::Bind { .. } => CliError {
            code: UNAVAILABLE,
            message: e.to_string(),
        },
        other => CliError {
            code: FAILED,
            message: other.to_string(),
        },
    }
}

/// The bearer token: the file's first line, else the environment variable.
fn token(file: Option<&Path>) -> Result<String, CliError> {
    let token = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                CliError::usage(format!(
                    "cannot read the token file {}: {e}",
                    path.display()
                ))
            })?;
            warn_if_shared(path);
            text.lines().next().unwrap_or_default().trim().to_string()
        }
        None => std::env::var(TOKEN_VAR)
            .unwrap_or_default()
            .trim()
            .to_string(),
    };
    if token.is_empty() {
        return Err(CliError::usage(format!(
            "the HTTP server needs a bearer token: put one in a file and pass --token-file FILE, or set {TOKEN_VAR} (make one with `head -c 32 /dev/urandom | base64`)"
        )));
    }
    Ok(token)
}

/// Says so when other users can read the token file.
fn warn_if_shared(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            eprintln!(
                "biocage: warning: {} can be read by other users; chmod 600 it",
                path.display()
            );
        }
    }
}

fn seconds(flag: &str, value: f64) -> Result<Duration, CliError> {
    match Duration::try_from_secs_f64(value) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(CliError::usage(format!(
            "{flag} {value} is not a number of seconds above 0"
        ))),
    }
}

/// Ends at Ctrl-C or SIGTERM.
async fn stop_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// Runs the server until the client goes away (stdio) or a signal (both).
pub(crate) async fn mcp(cli: &Cli, args: &McpArgs) -> Result<i32, CliError> {
    let config = config::build(&args.opts)?;
    let max_timeout = biocage_core::config::timeout_from_secs(args.max_timeout)?;
    let http = match &args.http {
        None => None,
        Some(addr) => {
            let addr = biocage_mcp::parse_listen_addr(addr).map_err(CliError::usage)?;
            let opts = HttpOptions::new(addr, token(args.token_file.as_deref())?)
                .allow_remote(args.allow_remote)
                .idle_timeout(seconds("--idle-timeout", args.idle_timeout)?)
                .max_sessions(args.max_sessions);
            opts.check().map_err(serve_error)?;
            Some(opts)
        }
    };
    let rt: Arc<dyn biocage_core::SandboxRuntime> = Arc::from(engine::connect(cli.runtime).await?);
    let options = ServerOptions::default()
        .pool(args.pool.unwrap_or(0))
        .max_timeout(max_timeout);
    let backend = Backend::new(rt, config, options)
        .await
        .map_err(serve_error)?;
    let engine = backend.engine().to_string();
    match http {
        None => {
            tracing::info!("serving MCP on stdio ({engine})");
            biocage_mcp::serve_stdio(backend, stop_signal())
                .await
                .map_err(serve_error)?;
        }
        Some(opts) => {
            if !opts.addr.ip().is_loopback() {
                eprintln!(
                    "biocage: warning: listening on {}, which is not a loopback address: other hosts can reach the sandboxes (with the token)",
                    opts.addr
                );
            }
            biocage_mcp::serve_http(backend, opts, stop_signal(), |addr| {
                eprintln!(
                    "biocage mcp: listening on http://{addr}/mcp ({engine}); clients send Authorization: Bearer TOKEN"
                );
            })
            .await
            .map_err(serve_error)?;
        }
    }
    Ok(OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_from_the_file_first_line() {
        let dir = std::env::temp_dir().join(format!("biocage-mcp-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "  0123456789abcdef0123 \nignored\n").unwrap();
        assert_eq!(token(Some(&file)).unwrap(), "0123456789abcdef0123");
        std::fs::write(&file, "\n").unwrap();
        assert_eq!(token(Some(&file)).unwrap_err().code, crate::exit::USAGE);
        assert_eq!(
            token(Some(&dir.join("missing"))).unwrap_err().code,
            crate::exit::USAGE
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn seconds_must_be_positive() {
        assert!(seconds("--idle-timeout", 0.0).is_err());
        assert!(seconds("--idle-timeout", -1.0).is_err());
        assert!(seconds("--idle-timeout", f64::NAN).is_err());
        assert_eq!(
            seconds("--idle-timeout", 1.5).unwrap(),
            Duration::from_millis(1500)
        );
    }
}
