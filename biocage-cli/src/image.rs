//! `biocage image build` and `biocage image ls`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use biocage_core::image::{BuildStatus, ImageDetails};
use biocage_core::{BuildEvent, BuildOptions, BuiltImage, SandboxRuntime};
use serde_json::json;

use crate::args::{BuildArgs, Cli, ImageCommand};
use crate::exit::{CliError, FAILED, OK};
use crate::inert::Stream;
use crate::{engine, progress};

/// Runs an image subcommand.
pub(crate) async fn image(cli: &Cli, command: &ImageCommand) -> Result<i32, CliError> {
    match command {
        ImageCommand::Build(args) => build(cli, args).await,
        ImageCommand::Ls => ls(cli).await,
    }
}

/// "476 MB", as engines print sizes.
pub(crate) fn human_size(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes;
    let mut tenths = 0;
    let mut unit = 0;
    while value >= 1000 && unit + 1 < units.len() {
        tenths = (value % 1000) / 100;
        value /= 1000;
        unit += 1;
    }
    if unit == 0 || value >= 100 {
        format!("{value} {}", units[unit])
    } else {
        format!("{value}.{tenths} {}", units[unit])
    }
}

/// "sha256:0123456789ab..." as its first 12 hex digits.
fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

/// "tabulate 0.10.0, toolz 1.2.0".
fn package_list(packages: &std::collections::BTreeMap<String, String>) -> String {
    packages
        .iter()
        .map(|(n, v)| format!("{n} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Builds an image: the recipe (through the engine API, or offline with the recipe's
/// build.sh), or a custom image with the packages asked for.
pub(crate) async fn build(cli: &Cli, args: &BuildArgs) -> Result<i32, CliError> {
    let custom = args.requirements.is_some() || args.pyproject.is_some();
    let tag = match (&args.tag, custom) {
        (Some(t), _) => t.clone(),
        (None, false) => biocage_core::config::DEFAULT_IMAGE.to_string(),
        (None, true) => {
            return Err(CliError::usage(
                "a custom image needs a name of its own: add --tag NAME, e.g. --tag biocage-custom:latest",
            ))
        }
    };
    let context = args
        .context
        .clone()
        .unwrap_or_else(|| PathBuf::from("python_docker"));
    let mut opts = if custom {
        let mut o = BuildOptions::new(PathBuf::new(), &tag);
        o.requirements = args.requirements.clone();
        o.pyproject = args.pyproject.clone();
        o.offline = args.offline;
        o.wheels = args.wheels.clone();
        o.allow_source = args.allow_source;
        o
    } else {
        if !args.wheels.is_empty() {
            return Err(CliError::usage(
                "--wheels is for custom images: give the packages with --requirements FILE or --pyproject FILE",
            ));
        }
        BuildOptions::new(&context, &tag)
    };
    opts.base_image = args.base.clone();
    opts.no_cache = args.no_cache;
    if args.offline && !custom {
        if args.base.is_some() {
            return Err(CliError::usage(format!(
                "--offline without packages builds the default image from Debian packages and takes no --base; to add packages to {}, give them with --requirements requirements.txt (or --pyproject pyproject.toml)",
                args.base.as_deref().unwrap_or_default()
            )));
        }
        check_recipe_context(&opts)?;
        let rt = engine::connect(cli.runtime).await?;
        return build_offline_recipe(cli, &opts, rt.as_ref()).await;
    }
    opts.validate()?;
    let rt = engine::connect(cli.runtime).await?;
    let started = Instant::now();
    let bar = progress::spinner(cli, &format!("building {tag} on {}", rt.name()));
    let (verbose, chatty) = (cli.verbose > 0, !cli.quiet && !cli.json);
    let shown = bar.clone();
    let mut status = BuildStatus::default();
    // Build steps run in containers too: their output is shown inertly on a terminal.
    let mut show = move |event: BuildEvent<'_>| {
        if status.update(&event) {
            // Phases are printed as lines of their own (when not quiet): the spinner
            // shows the step and the package.
            let summary = if chatty {
                status.detail()
            } else {
                status.summary()
            };
            shown.set_message(
                Stream::Stderr
                    .show(&summary)
                    .chars()
                    .take(110)
                    .collect::<String>(),
            );
        }
        match event {
            BuildEvent::Phase(p) if chatty => {
                let p = Stream::Stderr.show(p).into_owned();
                shown.suspend(|| eprintln!("==> {p}"));
            }
            BuildEvent::Line(l) if verbose => {
                let l = Stream::Stderr.show(l).into_owned();
                shown.suspend(|| eprintln!("{l}"));
            }
            _ => {}
        }
    };
    let built = rt.build_image(&opts, &mut show).await;
    bar.finish_and_clear();
    let built = built?;
    report(cli, &built, started.elapsed().as_secs_f64());
    Ok(OK)
}

/// Prints what a build made: one JSON object with --json, one line otherwise.
fn report(cli: &Cli, built: &BuiltImage, seconds: f64) {
    if cli.json {
        let mut value = serde_json::to_value(built).unwrap_or_else(|_| json!({}));
        if let Some(obj) = value.as_object_mut() {
            obj.insert("seconds".into(), json!((seconds * 10.0).round() / 10.0));
        }
        println!("{value}");
    } else if !cli.quiet {
        let packages = if built.packages.is_empty() {
            String::new()
        } else {
            format!(": {}", package_list(&built.packages))
        };
        eprintln!(
            "built {} ({}, {}, Python {}) on {} in {seconds:.1} s{}{packages}",
            built.tag,
            short_id(&built.image_id),
            human_size(built.size),
            built.python,
            built.engine,
            if built.cached {
                ", all steps cached"
            } else {
                ""
            },
        );
    }
}

/// Checks for the recipe's build.sh (offline recipe builds run it).
fn check_recipe_context(opts: &BuildOptions) -> Result<(), CliError> {
    if opts.context.join("build.sh").is_file() {
        Ok(())
    } else {
        Err(CliError::usage(format!(
            "{} has no build.sh; point --context at the python_docker folder",
            opts.context.display()
        )))
    }
}

/// The offline path of python_docker/build.sh (base from Debian packages, wheels
/// downloaded on the host), for engines that cannot reach a registry.
async fn build_offline_recipe(
    cli: &Cli,
    opts: &BuildOptions,
    rt: &dyn SandboxRuntime,
) -> Result<i32, CliError> {
    let started = Instant::now();
    let script = opts.context.join("build.sh");
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(&script)
        .arg("--offline")
        .env("TAG", &opts.tag)
        .env("ENGINE", engine_command(rt.name()));
    if cli.json || cli.quiet {
        // Quiet: its output is kept for the error message.
        cmd.stdin(std::process::Stdio::null());
        let out = cmd
            .output()
            .map_err(|e| CliError::usage(format!("cannot run {}: {e}", script.display())))?;
        if !out.status.success() {
            let text = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            return Err(offline_failed(
                &script,
                &out.status,
                &tail.into_iter().rev().collect::<Vec<_>>().join(" / "),
            ));
        }
    } else {
        let status = cmd
            .status()
            .map_err(|e| CliError::usage(format!("cannot run {}: {e}", script.display())))?;
        if !status.success() {
            return Err(offline_failed(&script, &status, "see its output above"));
        }
    }
    let details = rt.image_details(&opts.tag).await?.ok_or_else(|| CliError {
        code: FAILED,
        message: format!(
            "{} --offline ended but {} is not in {}",
            script.display(),
            opts.tag,
            rt.name()
        ),
    })?;
    let seconds = started.elapsed().as_secs_f64();
    if cli.json {
        println!(
            "{}",
            json!({
                "tag": opts.tag,
                "image_id": details.id,
                "size": details.size,
                "engine": rt.name(),
                "base": null,
                "python": details.python(),
                "packages": details.packages(),
                "recipe": details.recipe(),
                "offline": true,
                "seconds": (seconds * 10.0).round() / 10.0,
            })
        );
    } else if !cli.quiet {
        eprintln!(
            "built {} ({}, {}) on {} in {seconds:.1} s",
            opts.tag,
            short_id(&details.id),
            human_size(details.size),
            rt.name()
        );
    }
    Ok(OK)
}

fn offline_failed(script: &Path, status: &std::process::ExitStatus, detail: &str) -> CliError {
    CliError {
        code: FAILED,
        message: format!("{} --offline failed ({status}): {detail}", script.display()),
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

/// One image as `image ls --json` prints it.
fn listing(d: &ImageDetails) -> serde_json::Value {
    json!({
        "tags": d.tags,
        "id": d.id,
        "size": d.size,
        "kind": d.kind(),
        "python": d.python(),
        "base": d.base(),
        "requested": d.requested(),
        "packages": d.packages(),
        "recipe": d.recipe(),
    })
}

/// Lists the BioCage images with their Python, packages and recipe.
pub(crate) async fn ls(cli: &Cli) -> Result<i32, CliError> {
    let rt = engine::connect(cli.runtime).await?;
    // Untagged ones are leftovers of earlier builds under the same name.
    let mut images: Vec<ImageDetails> = rt
        .list_images()
        .await?
        .into_iter()
        .filter(|d| !d.tags.is_empty())
        .collect();
    images.sort_by(|a, b| a.tags.cmp(&b.tags));
    let mut out = std::io::stdout().lock();
    if cli.json {
        let list: Vec<_> = images.iter().map(listing).collect();
        let _ = writeln!(out, "{}", serde_json::Value::Array(list));
        return Ok(OK);
    }
    let width = images
        .iter()
        .flat_map(|d| d.tags.iter().map(String::len))
        .max()
        .unwrap_or(0)
        .max(5);
    // A closed pipe (`| head`) ends the listing quietly.
    let _ = writeln!(
        out,
        "{:<width$}  {:<12}  {:>8}  {:<7}  RECIPE (PACKAGES)",
        "IMAGE", "ID", "SIZE", "PYTHON"
    );
    for d in &images {
        let packages = d.packages();
        let recipe = if packages.is_empty() {
            d.recipe()
        } else {
            format!("{} ({})", d.recipe(), package_list(&packages))
        };
        for name in &d.tags {
            let _ = writeln!(
                out,
                "{:<width$}  {:<12}  {:>8}  {:<7}  {}",
                name,
                short_id(&d.id),
                human_size(d.size),
                d.python().unwrap_or("-"),
                recipe
            );
        }
    }
    Ok(OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_engines_print_them() {
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(476_000_000), "476 MB");
        assert_eq!(human_size(1_536_000), "1.5 MB");
        assert_eq!(short_id("sha256:0123456789abcdef"), "0123456789ab");
    }
}
