//! Whether this Podman service knows gVisor's runtime. Podman lists no runtimes (its
//! info names the default only), but it refuses to create a container with a runtime
//! it does not know: a container is created with it from an image the service holds,
//! never started, and removed.

use biocage_core::limits::GVISOR_RUNTIME;
use podman_api::opts::{ContainerCreateOpts, ImageListOpts};
use podman_api::Podman;

/// Whether containers of this service can run under [`GVISOR_RUNTIME`]. False when the
/// service holds no image (no session can start there either).
pub(crate) async fn probe(podman: &Podman) -> bool {
    let image = match podman.images().list(&ImageListOpts::default()).await {
        Ok(list) => list.into_iter().find_map(|i| i.id),
        Err(e) => {
            tracing::warn!("listing images to look for the gVisor runtime: {e}");
            None
        }
    };
    let Some(image) = image else {
        return false;
    };
    let name = format!(
        "biocage-probe-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    let opts = ContainerCreateOpts::builder()
        .name(&name)
        .image(&image)
        .command(["true"])
        .oci_runtime(GVISOR_RUNTIME)
        .build();
    let made = podman.containers().create(&opts).await;
    if made.is_ok() {
        if let Err(e) = podman.containers().get(&name).remove().await {
            tracing::warn!("removing the probe container {name}: {e}");
        }
    }
    tracing::debug!(ok = made.is_ok(), "podman runtime {GVISOR_RUNTIME}");
    made.is_ok()
}
