//! From command-line session options to a checked [`SandboxConfig`].

use biocage_core::SandboxConfig;

use crate::args::SessionOpts;
use crate::exit::CliError;

fn split_pair<'a>(
    flag: &str,
    text: &'a str,
    sep: char,
    form: &str,
) -> Result<(&'a str, &'a str), CliError> {
    match text.split_once(sep) {
        // An environment variable may be set to the empty string; nothing else may be empty.
        Some((a, b)) if !a.is_empty() && (!b.is_empty() || sep == '=') => Ok((a, b)),
        _ => Err(CliError::usage(format!(
            "{flag} {text:?} is not {form}; for example {flag} {}",
            if sep == ':' {
                "./data:/data"
            } else {
                "DEBUG=1"
            }
        ))),
    }
}

/// The sandbox configuration the options ask for.
pub(crate) fn build(opts: &SessionOpts) -> Result<SandboxConfig, CliError> {
    let timeout = biocage_core::config::timeout_from_secs(opts.timeout)?;
    let mut b = SandboxConfig::builder()
        .image(&opts.image)
        .memory(&opts.memory)
        .cpus(opts.cpus)
        .pids_limit(opts.pids)
        .network(opts.network)
        .timeout(timeout)
        .allow_unenforced_limits(opts.allow_unenforced)
        .force_system_rw(opts.force_system_rw)
        .isolation(opts.isolation.into());
    for e in &opts.expose {
        let (host, target) = split_pair("--expose", e, ':', "HOST:CONTAINER")?;
        b = b.expose(absolute(host)?, target);
    }
    for e in &opts.expose_rw {
        let (host, target) = split_pair("--expose-rw", e, ':', "HOST:CONTAINER")?;
        b = b.expose_rw(absolute(host)?, target);
    }
    for e in &opts.env {
        let (k, v) = split_pair("--env", e, '=', "KEY=VALUE")?;
        b = b.env(k, v);
    }
    Ok(b.build()?)
}

fn absolute(host: &str) -> Result<std::path::PathBuf, CliError> {
    let p = std::path::Path::new(host);
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    std::env::current_dir()
        .map(|d| d.join(p))
        .map_err(|e| CliError::usage(format!("cannot resolve {host}: {e}")))
}
