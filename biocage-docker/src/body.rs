//! Translation of the engine-neutral [`ContainerSpec`] into Docker's create body.

use std::collections::HashMap;

use biocage_core::{ContainerSpec, Result};
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigCgroupnsModeEnum, HostConfigLogConfig, Mount,
    MountType, MountVolumeOptions, MountVolumeOptionsDriverConfig, ResourcesUlimits,
};

/// Docker's own masked paths (Engine 20.10): kept when the spec adds to them.
const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];

/// The create body for `spec`; cgroup limits applied when `cgroup_limits`.
pub(crate) fn create_body(
    spec: &ContainerSpec,
    cgroup_limits: bool,
) -> Result<ContainerCreateBody> {
    let (volumes, tmpfs): (Vec<_>, Vec<_>) = spec.tmpfs.iter().partition(|t| t.volume);
    let tmpfs: HashMap<String, String> = tmpfs
        .iter()
        .map(|t| (t.target.clone(), t.kernel_options().join(",")))
        .collect();
    // Anonymous volumes: removed with the container (auto-remove, or removal with `v`).
    let mounts: Vec<Mount> = volumes
        .iter()
        .map(|t| Mount {
            target: Some(t.target.clone()),
            typ: Some(MountType::VOLUME),
            volume_options: Some(MountVolumeOptions {
                no_copy: Some(true),
                labels: Some(spec.labels.clone().into_iter().collect()),
                driver_config: Some(MountVolumeOptionsDriverConfig {
                    name: Some("local".to_string()),
                    options: Some(t.volume_options()),
                }),
                subpath: None,
            }),
            ..Default::default()
        })
        .collect();
    // Binds through the Mounts API: a host path holding ':' stays one path (a Binds
    // string would split it).
    let mut mounts = mounts;
    mounts.extend(spec.binds.iter().map(|b| Mount {
        target: Some(b.target.clone()),
        source: Some(b.host.display().to_string()),
        typ: Some(MountType::BIND),
        read_only: Some(b.read_only),
        ..Default::default()
    }));
    let ulimits = spec
        .ulimits
        .iter()
        .map(|r| {
            let (name, v) = r.name_and_value();
            let v = i64::try_from(v).unwrap_or(i64::MAX);
            ResourcesUlimits {
                name: Some(name.to_string()),
                soft: Some(v),
                hard: Some(v),
            }
        })
        .collect();
    let mut host = HostConfig {
        network_mode: Some(if spec.network { "bridge" } else { "none" }.to_string()),
        readonly_rootfs: Some(true),
        runtime: spec.oci_runtime.clone(),
        tmpfs: Some(tmpfs),
        cap_drop: Some(vec!["ALL".to_string()]),
        cap_add: (!spec.cap_add.is_empty()).then(|| spec.cap_add.clone()),
        security_opt: Some(vec!["no-new-privileges".to_string()]),
        shm_size: Some(ContainerSpec::signed("shm size", spec.shm_bytes)?),
        // Logs of the container's main process are not kept: nothing can fill the disk.
        log_config: Some(HostConfigLogConfig {
            typ: Some("none".to_string()),
            config: None,
        }),
        ulimits: Some(ulimits),
        mounts: (!mounts.is_empty()).then_some(mounts),
        auto_remove: Some(true),
        ipc_mode: Some("private".to_string()),
        // The sandbox sees its own cgroup as the root, nothing of the host's hierarchy.
        cgroupns_mode: Some(HostConfigCgroupnsModeEnum::PRIVATE),
        // Setting masked paths replaces the engine's list: its defaults, then ours.
        masked_paths: Some(
            DEFAULT_MASKED_PATHS
                .iter()
                .map(|p| p.to_string())
                .chain(spec.masked_paths.iter().cloned())
                .collect(),
        ),
        sysctls: Some(spec.sysctls.clone().into_iter().collect()),
        ..Default::default()
    };
    if cgroup_limits {
        let memory = ContainerSpec::signed("memory", spec.memory_bytes)?;
        host.memory = Some(memory);
        host.memory_swap = Some(memory);
        host.nano_cpus = Some(spec.cpu_units(1_000_000_000));
        host.pids_limit = Some(i64::from(spec.pids_limit));
    }
    Ok(ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: Some(spec.init_argv.clone()),
        entrypoint: Some(vec![]),
        user: Some(spec.user.clone()),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(spec.labels.clone().into_iter().collect()),
        working_dir: Some(spec.workdir.clone()),
        network_disabled: Some(!spec.network),
        stop_signal: Some("SIGKILL".to_string()),
        host_config: Some(host),
        ..Default::default()
    })
}
