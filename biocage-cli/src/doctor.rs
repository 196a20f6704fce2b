//! `biocage doctor`: is everything needed there, and how is each limit enforced?

use biocage_core::image::PythonTarget;
use biocage_core::{Enforcement, LimitPlan, SandboxConfig};
use serde_json::json;

use crate::args::Cli;
use crate::engine;
use crate::exit::{CliError, OK, UNAVAILABLE};

/// Reports engine, image and limits; exit 69 with the fix when something is missing.
pub(crate) async fn doctor(cli: &Cli, image: &str) -> Result<i32, CliError> {
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
    let details = rt.image_details(image).await?;
    let has_image = details.is_some();
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
    // A session on the image: proof that it hosts one, and its Python as it is.
    let mut image_json = json!({"name": image, "present": has_image});
    let mut image_line = format!(
        "image: {image} {}",
        if has_image { "present" } else { "MISSING" }
    );
    if let Some(d) = &details {
        let recorded = d.packages();
        let (python, live) = match PythonTarget::of_image(rt.as_ref(), &d.id).await {
            Ok(t) => (Some(t.version), t.packages),
            Err(e) => {
                problems.push(format!("a session on {image} did not start: {e}"));
                (None, Default::default())
            }
        };
        // The packages asked for when it was built, at the versions installed now.
        let mut packages = std::collections::BTreeMap::new();
        for name in recorded.keys() {
            match live.get(name) {
                Some(v) => {
                    packages.insert(name.clone(), v.clone());
                }
                None if python.is_some() => problems.push(format!(
                    "{image} was built with {name}, which its Python does not have now"
                )),
                None => {}
            }
        }
        image_line.push_str(&format!(
            " ({}, {}), Python {}, {}",
            d.id.strip_prefix("sha256:")
                .unwrap_or(&d.id)
                .chars()
                .take(12)
                .collect::<String>(),
            crate::image::human_size(d.size),
            python.as_deref().unwrap_or("unknown"),
            d.recipe()
        ));
        if !packages.is_empty() {
            image_line.push_str(&format!(
                "\n  packages: {}",
                packages
                    .iter()
                    .map(|(n, v)| format!("{n} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        image_json = json!({
            "name": image,
            "present": true,
            "id": d.id,
            "size": d.size,
            "python": python,
            "packages": packages,
            "recipe": d.recipe(),
        });
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
                "image": image_json,
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
        match &caps.gvisor_runtime {
            Some(name) => {
                println!("isolation: container (default); gvisor available (engine runtime {name})")
            }
            None => println!(
                "isolation: container (default); gvisor not available: {}",
                biocage_core::limits::GVISOR_HINT
            ),
        }
        println!("{image_line}");
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
