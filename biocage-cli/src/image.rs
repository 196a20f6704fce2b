//! `biocage image build`.

use std::path::Path;

use biocage_core::BuildOptions;

use crate::args::Cli;
use crate::exit::{CliError, OK, UNAVAILABLE};
use crate::inert::Stream;
use crate::{engine, progress};

/// Builds the sandbox image through the engine API, or with the offline script.
pub async fn build(
    cli: &Cli,
    context: &Path,
    tag: &str,
    base: Option<&str>,
    requirements: Option<&Path>,
    offline: bool,
) -> Result<i32, CliError> {
    let mut opts = BuildOptions::new(context, tag);
    opts.base_image = base.map(str::to_string);
    opts.requirements = requirements.map(Path::to_path_buf);
    opts.validate()?;
    let rt = engine::connect(cli.runtime).await?;
    if offline {
        return build_offline(&opts, rt.name());
    }
    let bar = progress::spinner(cli, &format!("building {tag} on {}", rt.name()));
    let verbose = cli.verbose > 0;
    let shown = bar.clone();
    // Build steps run in containers too: their output is shown inertly on a terminal.
    let mut show = move |line: &str| {
        let line = Stream::Stderr.show(line);
        shown.set_message(line.chars().take(100).collect::<String>());
        if verbose {
            shown.suspend(|| eprintln!("{line}"));
        }
    };
    rt.build_image(&opts, &mut show).await?;
    bar.finish_and_clear();
    if !cli.quiet {
        eprintln!("built {tag} on {}", rt.name());
    }
    Ok(OK)
}

/// The offline path of python_docker/build.sh (base from Debian packages, wheels
/// downloaded on the host), for engines that cannot reach a registry.
fn build_offline(opts: &BuildOptions, engine_cli: &str) -> Result<i32, CliError> {
    if opts.requirements.is_some() || opts.base_image.is_some() {
        return Err(CliError::usage(
            "--offline builds from its own Debian base and CONTEXT/requirements.txt; edit that file instead of passing --base or --requirements",
        ));
    }
    let script = opts.context.join("build.sh");
    let status = std::process::Command::new("bash")
        .arg(&script)
        .arg("--offline")
        .env("TAG", &opts.tag)
        .env("ENGINE", engine_command(engine_cli))
        .status()
        .map_err(|e| CliError::usage(format!("cannot run {}: {e}", script.display())))?;
    if status.success() {
        Ok(OK)
    } else {
        Err(CliError {
            code: UNAVAILABLE,
            message: format!(
                "{} --offline failed ({status}); see its output above",
                script.display()
            ),
        })
    }
}

/// The engine's command line as build.sh runs it: Podman through the same API socket the
/// sandboxes use (a rootless service's storage is not root's).
fn engine_command(engine: &str) -> String {
    if engine == "podman" {
        if let Some(sock) = biocage_podman::discover_socket()
            .into_iter()
            .find(|p| p.exists())
        {
            return format!("podman --remote --url unix://{}", sock.display());
        }
    }
    engine.to_string()
}
