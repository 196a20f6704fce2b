//! Picking the container engine.

use biocage_core::SandboxRuntime;

use crate::args::RuntimeChoice;
use crate::exit::{CliError, UNAVAILABLE};

/// Connects to the chosen engine (`auto` tries Docker, then Podman) and removes the
/// sandboxes that processes now gone left behind.
pub(crate) async fn connect(choice: RuntimeChoice) -> Result<Box<dyn SandboxRuntime>, CliError> {
    let rt = pick(choice).await?;
    biocage_core::reap_orphans(rt.as_ref()).await;
    Ok(rt)
}

async fn pick(choice: RuntimeChoice) -> Result<Box<dyn SandboxRuntime>, CliError> {
    match choice {
        RuntimeChoice::Docker => Ok(Box::new(biocage_docker::DockerRuntime::connect().await?)),
        RuntimeChoice::Podman => Ok(Box::new(biocage_podman::PodmanRuntime::connect().await?)),
        RuntimeChoice::Auto => {
            let docker = match biocage_docker::DockerRuntime::connect().await {
                Ok(rt) => {
                    tracing::info!("runtime auto: picked docker at {}", rt.endpoint());
                    return Ok(Box::new(rt));
                }
                Err(e) => e,
            };
            match biocage_podman::PodmanRuntime::connect().await {
                Ok(rt) => {
                    tracing::info!(
                        "runtime auto: docker unavailable, picked podman at {}",
                        rt.endpoint()
                    );
                    Ok(Box::new(rt))
                }
                Err(podman) => Err(CliError {
                    code: UNAVAILABLE,
                    message: format!("no container engine answered. {docker}; {podman}"),
                }),
            }
        }
    }
}
