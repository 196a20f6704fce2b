//! `biocage doctor`: is everything needed there, and how is each limit enforced?

use biocage_core::{Enforcement, LimitPlan, SandboxConfig};
use serde_json::json;

use crate::args::Cli;
use crate::engine;
use crate::exit::{CliError, OK, UNAVAILABLE};

/// Reports engine, image and limits; exit 69 with the fix when something is missing.
pub async fn doctor(cli: &Cli, image: &str) -> Result<i32, CliError> {
    let rt = match engine::connect(cli.runtime).await {
        Ok(rt) => rt,
        Err(e) => {
            if cli.json {
                println!(
                    "{}",
                    json!({"ok": false, "engine": null, "problems": [e.message]})
                );
            } else {
                println!("engine: NOT REACHABLE\n  {}", e.message);
            }
            return Ok(e.code);
        }
    };
    let caps = rt.capabilities().await?;
    let has_image = rt.image_exists(image).await?;
    let config = SandboxConfig::builder()
        .image(image)
        .allow_unenforced_limits(true)
        .build()?;
    let plan = LimitPlan::new(&caps, &config)?;
    let mut problems = Vec::new();
    if !has_image {
        problems.push(format!(
            "image {image} is missing: build it with `biocage --runtime {} image build` (offline machines: `biocage --runtime {} image build --offline`, or as root `scripts/setup.sh`)",
            rt.name(),
            rt.name()
        ));
    }
    let unenforced: Vec<&str> = plan
        .limits
        .iter()
        .filter(|l| l.enforcement == Enforcement::Unenforced && l.name != "network")
        .map(|l| l.name.as_str())
        .collect();
    if cli.json {
        println!(
            "{}",
            json!({
                "ok": problems.is_empty(),
                "engine": caps,
                "image": {"name": image, "present": has_image},
                "limits": plan.limits,
                "unenforced": unenforced,
                "problems": problems,
            })
        );
    } else {
        println!(
            "engine: {} {} (API {}), {}, cgroup v{}",
            caps.engine,
            caps.engine_version,
            caps.api_version,
            if caps.rootless { "rootless" } else { "rootful" },
            caps.cgroup_version
        );
        println!(
            "image: {image} {}",
            if has_image { "present" } else { "MISSING" }
        );
        println!("limits (default configuration):");
        for l in &plan.limits {
            println!(
                "  {:<8} {:<12} {:<11} {}",
                l.name,
                l.value,
                format!("{:?}", l.enforcement).to_lowercase(),
                l.mechanism
            );
        }
        if !unenforced.is_empty() {
            println!(
                "note: {} cannot be enforced here; sessions refuse to start unless --allow-unenforced is given",
                unenforced.join(", ")
            );
        }
        for p in &problems {
            println!("problem: {p}");
        }
    }
    Ok(if problems.is_empty() { OK } else { UNAVAILABLE })
}
