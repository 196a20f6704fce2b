//! Tmpfs mounts with a file-count limit on Podman. Podman refuses the tmpfs option
//! `nr_inodes`, but its local volume driver mounts a tmpfs with the options it is given
//! (Podman 5; 4.3 reads `size` as a quota and refuses): each such mount of a session is
//! a volume of its own, made before the container and removed with it. Volumes carry the
//! session's labels and the container's name, so that `gc` finds those left behind.

use std::collections::HashMap;

use biocage_core::{ContainerSpec, Error, Result, TmpfsMount};
use podman_api::models::NamedVolume;
use podman_api::opts::{VolumeCreateOpts, VolumeListFilter, VolumeListOpts};
use podman_api::Podman;

use crate::ENGINE;

/// Label: the container a volume belongs to.
const LABEL_CONTAINER: &str = "org.biocage.container";

fn failed(action: impl Into<String>, e: impl Into<biocage_core::error::BoxError>) -> Error {
    Error::engine(ENGINE, action, e)
}

/// The local driver's options for a tmpfs like `t`.
fn driver_options(t: &TmpfsMount) -> HashMap<String, String> {
    let mut o = vec![
        format!("size={}", t.size_bytes),
        format!("mode={:o}", t.mode),
    ];
    if let Some(n) = t.inodes {
        o.push(format!("nr_inodes={n}"));
    }
    if let Some((uid, gid)) = t.owner {
        o.push(format!("uid={uid}"));
        o.push(format!("gid={gid}"));
    }
    HashMap::from([
        ("type".to_string(), "tmpfs".to_string()),
        ("device".to_string(), "tmpfs".to_string()),
        ("o".to_string(), o.join(",")),
    ])
}

/// Whether this service mounts a tmpfs volume with `nr_inodes` (tried once, removed).
pub(crate) async fn probe(podman: &Podman) -> bool {
    let name = format!(
        "biocage-probe-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    let t = TmpfsMount {
        target: "/probe".into(),
        size_bytes: 1 << 20,
        inodes: Some(16),
        mode: 0o700,
        owner: None,
        exec: false,
        volume: false,
    };
    let opts = VolumeCreateOpts::builder()
        .name(&name)
        .driver("local")
        .options(driver_options(&t))
        .build();
    let made = podman.volumes().create(&opts).await;
    if made.is_ok() {
        if let Err(e) = podman.volumes().get(&name).remove().await {
            tracing::warn!("removing the probe volume {name}: {e}");
        }
    }
    tracing::debug!(ok = made.is_ok(), "podman tmpfs volumes with nr_inodes");
    made.is_ok()
}

/// Makes a volume for every tmpfs of `spec` that limits its files; returns them as the
/// container mounts them. On failure the volumes made so far are removed.
pub(crate) async fn create(podman: &Podman, spec: &ContainerSpec) -> Result<Vec<NamedVolume>> {
    let mut made = Vec::new();
    for (i, t) in spec.tmpfs.iter().enumerate() {
        if t.inodes.is_none() {
            continue;
        }
        let name = format!("{}-v{i}", spec.name);
        let mut labels = spec.labels.clone();
        labels.insert(LABEL_CONTAINER.to_string(), spec.name.clone());
        let opts = VolumeCreateOpts::builder()
            .name(&name)
            .driver("local")
            .labels(labels)
            .options(driver_options(t))
            .build();
        if let Err(e) = podman.volumes().create(&opts).await {
            remove_of(podman, &spec.name).await;
            return Err(failed(format!("creating the tmpfs volume {name}"), e));
        }
        let mut mount = vec!["nosuid".to_string(), "nodev".to_string()];
        mount.push(if t.exec { "exec" } else { "noexec" }.to_string());
        made.push(NamedVolume {
            dest: Some(t.target.clone()),
            is_anonymous: None,
            name: Some(name),
            options: Some(mount),
        });
    }
    Ok(made)
}

/// Removes the volumes of container `name` (logged, not failed: `gc` retries).
pub(crate) async fn remove_of(podman: &Podman, name: &str) {
    let opts = VolumeListOpts::builder()
        .filter([VolumeListFilter::LabelKeyVal(
            LABEL_CONTAINER.to_string(),
            name.to_string(),
        )])
        .build();
    let list = match podman.volumes().list(&opts).await {
        Ok(list) => list,
        Err(e) => {
            tracing::warn!("listing the volumes of {name}: {e}");
            return;
        }
    };
    for v in list {
        if let Err(e) = podman.volumes().get(&v.name).remove().await {
            tracing::warn!("removing volume {}: {e}", v.name);
        }
    }
}

/// Removes BioCage volumes whose container is gone and whose owner process (on this
/// host) is gone too; returns how many.
pub(crate) async fn remove_leftovers(podman: &Podman, live: &[String]) -> Result<usize> {
    let opts = VolumeListOpts::builder()
        .filter([VolumeListFilter::LabelKey(LABEL_CONTAINER.to_string())])
        .build();
    let list = podman
        .volumes()
        .list(&opts)
        .await
        .map_err(|e| failed("listing volumes", e))?;
    let mut removed = 0;
    for v in list {
        let labels = v.labels;
        let container = labels.get(LABEL_CONTAINER).cloned().unwrap_or_default();
        if live.contains(&container) || biocage_core::owner_alive(&labels) {
            continue;
        }
        match podman.volumes().get(&v.name).remove().await {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!("removing volume {}: {e}", v.name),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_carry_the_file_limit_and_owner() {
        let t = TmpfsMount {
            target: "/w".into(),
            size_bytes: 1024,
            inodes: Some(5),
            mode: 0o700,
            owner: Some((10000, 10000)),
            exec: true,
            volume: false,
        };
        let o = driver_options(&t);
        assert_eq!(o["type"], "tmpfs");
        assert_eq!(o["o"], "size=1024,mode=700,nr_inodes=5,uid=10000,gid=10000");
    }
}
