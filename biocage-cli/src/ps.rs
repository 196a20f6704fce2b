//! `biocage ps` and `biocage gc`.

use biocage_core::SandboxSummary;

use crate::args::Cli;
use crate::engine;
use crate::exit::{CliError, OK};

fn print(cli: &Cli, list: &[SandboxSummary]) {
    if cli.json {
        println!(
            "{}",
            serde_json::to_string(list).unwrap_or_else(|_| "[]".into())
        );
        return;
    }
    println!(
        "{:<12}  {:<26}  {:<16}  {:<8}  {:<9}  IMAGE",
        "CONTAINER", "NAME", "SESSION", "STATE", "ISOLATION"
    );
    for s in list {
        println!(
            "{:<12}  {:<26}  {:<16}  {:<8}  {:<9}  {}",
            &s.container_id[..s.container_id.len().min(12)],
            s.name,
            s.session_id,
            s.state,
            s.isolation,
            s.image
        );
    }
}

/// Lists the managed sandboxes.
pub(crate) async fn ps(cli: &Cli) -> Result<i32, CliError> {
    let rt = engine::connect(cli.runtime).await?;
    print(cli, &rt.list_sandboxes().await?);
    Ok(OK)
}

/// Removes leftover sandboxes (all with `all`) and lists what was removed.
pub(crate) async fn gc(cli: &Cli, all: bool) -> Result<i32, CliError> {
    let rt = engine::connect(cli.runtime).await?;
    let removed = if all {
        let list = rt.list_sandboxes().await?;
        for s in &list {
            rt.remove_sandbox(&s.container_id).await?;
        }
        list
    } else {
        rt.gc().await?
    };
    if cli.json {
        print(cli, &removed);
    } else if !cli.quiet {
        eprintln!("removed {} sandbox(es)", removed.len());
    }
    Ok(OK)
}
