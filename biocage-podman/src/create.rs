//! Translation of the engine-neutral [`ContainerSpec`] into libpod create options.

use biocage_core::{ContainerSpec, Result, TmpfsMount};
use podman_api::models::{
    ContainerMount, LinuxCpu, LinuxMemory, LinuxPids, LinuxResources, LogConfig, NamedVolume,
    Namespace, PosixRlimit,
};
use podman_api::opts::ContainerCreateOpts;

/// Create options for `spec`; cgroup limits set when the engine applies them.
/// Tmpfs mounts whose files are limited come as `volumes` (see `volumes.rs`).
pub(crate) fn create_opts(
    spec: &ContainerSpec,
    cgroup_limits: bool,
    volumes: Vec<NamedVolume>,
) -> Result<ContainerCreateOpts> {
    // /dev/shm as a tmpfs of our own: Podman 5 mounts its own read-only under a
    // read-only root (it lacks podman-api's `read_write_tmpfs`), and 4.x accepts this too.
    let shm = TmpfsMount {
        target: "/dev/shm".into(),
        size_bytes: spec.shm_bytes,
        inodes: None,
        mode: 0o1777,
        owner: None,
        exec: false,
        volume: false,
    };
    let mut mounts: Vec<ContainerMount> = spec
        .tmpfs
        .iter()
        .filter(|t| {
            !volumes
                .iter()
                .any(|v| v.dest.as_deref() == Some(t.target.as_str()))
        })
        .chain(std::iter::once(&shm))
        .map(|t| ContainerMount {
            destination: Some(t.target.clone()),
            options: Some(tmpfs_options(t)),
            source: Some("tmpfs".into()),
            _type: Some("tmpfs".into()),
            uid_mappings: None,
            gid_mappings: None,
        })
        .collect();
    mounts.extend(spec.binds.iter().map(|b| ContainerMount {
        destination: Some(b.target.clone()),
        options: Some(vec![
            "rbind".into(),
            if b.read_only { "ro" } else { "rw" }.into(),
        ]),
        source: Some(b.host.display().to_string()),
        _type: Some("bind".into()),
        uid_mappings: None,
        gid_mappings: None,
    }));
    let rlimits: Vec<PosixRlimit> = spec
        .ulimits
        .iter()
        .map(|r| {
            let (name, v) = r.name_and_value();
            PosixRlimit {
                hard: Some(v),
                soft: Some(v),
                type_: Some(name.to_string()),
            }
        })
        .collect();
    let env: Vec<(String, String)> = spec.env.clone().into_iter().collect();
    let mut b = ContainerCreateOpts::builder()
        .name(&spec.name)
        .image(&spec.image)
        .command(spec.init_argv.clone())
        .user(&spec.user)
        .work_dir(&spec.workdir)
        .env(env)
        .labels(spec.labels.clone())
        .read_only_fs(true)
        .drop_capabilities(["ALL"])
        .add_capabilities(spec.cap_add.clone())
        .mounts(mounts)
        .volumes(volumes)
        .r_limits(rlimits)
        .shm_size(ContainerSpec::signed("shm size", spec.shm_bytes)?)
        .remove(true)
        .ipc_namespace(Namespace {
            nsmode: Some("private".into()),
            value: None,
        })
        .log_configuration(LogConfig {
            type_: Some("none".into()),
            config: None,
        })
        .stop_signal(9)
        .mask(spec.masked_paths.clone())
        .sysctl(spec.sysctls.clone())
        // The sandbox sees its own cgroup as the root, nothing of the host's hierarchy.
        .cgroup_namespace(Namespace {
            nsmode: Some("private".into()),
            value: None,
        });
    if let Some(runtime) = &spec.oci_runtime {
        b = b.oci_runtime(runtime);
    }
    if !spec.network {
        b = b.net_namespace(Namespace {
            nsmode: Some("none".into()),
            value: None,
        });
    }
    if cgroup_limits {
        b = b.resource_limits(resources(spec)?);
    }
    Ok(b.build())
}

/// cgroup limits: memory with swap equal to it (no swap), pids, cpu quota.
fn resources(spec: &ContainerSpec) -> Result<LinuxResources> {
    let memory = ContainerSpec::signed("memory", spec.memory_bytes)?;
    Ok(LinuxResources {
        block_io: None,
        cpu: Some(LinuxCpu {
            cpus: None,
            mems: None,
            period: Some(100_000),
            quota: Some(spec.cpu_units(100_000)),
            realtime_period: None,
            realtime_runtime: None,
            shares: None,
        }),
        devices: None,
        hugepage_limits: None,
        memory: Some(LinuxMemory {
            disable_oom_killer: None,
            kernel: None,
            kernel_tcp: None,
            limit: Some(memory),
            reservation: None,
            swap: Some(memory),
            swappiness: None,
            use_hierarchy: None,
        }),
        network: None,
        pids: Some(LinuxPids {
            limit: Some(i64::from(spec.pids_limit)),
        }),
        rdma: None,
        unified: None,
    })
}

/// Podman refuses tmpfs uid=/gid= options; its "U" option chowns the tmpfs to the
/// container's user instead, which is what they ask for. It refuses nr_inodes too:
/// the inode limit is then reported as not enforced (see the capabilities).
fn tmpfs_options(t: &TmpfsMount) -> Vec<String> {
    let plain = TmpfsMount {
        inodes: None,
        owner: None,
        ..t.clone()
    };
    let mut out = plain.kernel_options();
    if t.owner.is_some() {
        out.push("U".into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::tmpfs_options;
    use biocage_core::TmpfsMount;

    #[test]
    fn owner_becomes_chown_and_inodes_are_left_out() {
        let t = TmpfsMount {
            target: "/w".into(),
            size_bytes: 10,
            inodes: Some(5),
            mode: 0o700,
            owner: Some((1000, 1000)),
            exec: true,
            volume: false,
        };
        assert_eq!(
            tmpfs_options(&t),
            ["rw", "nosuid", "nodev", "size=10", "mode=0700", "U"]
        );
    }
}
