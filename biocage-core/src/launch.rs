//! Making a session, the same way on every engine.

use crate::config::{SandboxConfig, DEFAULT_USER};
use crate::engine::Engine;
use crate::engine_runtime::EngineRuntime;
use crate::error::{Error, Result};
use crate::limits::{map_id, LimitPlan};
use crate::runtime::{SandboxRuntime, Session};
use crate::session::AgentSession;
use crate::spec::ContainerSpec;
use crate::staging::{HostOwner, Staging};
use crate::uids::{UidLease, ROOTFUL_UIDS, ROOTLESS_UIDS};

/// Checks the config, plans the limits (refusing what cannot be held), checks the image,
/// stages exposures, has the engine start the container and connects the agent.
/// `build_command` is what the image-missing error tells the user to run.
pub(crate) async fn launch_session<E: Engine>(
    rt: &EngineRuntime<E>,
    config: &SandboxConfig,
    build_command: &str,
) -> Result<Box<dyn Session>> {
    config.validate()?;
    let caps = rt.capabilities().await?;
    let plan = LimitPlan::new(&caps, config)?;
    let Some(image) = rt.image_details(&config.image).await? else {
        return Err(Error::ImageMissing {
            image: config.image.clone(),
            engine: rt.name().to_string(),
            build_command: build_command.to_string(),
        });
    };
    let mut config = config.clone();
    let mut lease = None;
    if config.user == DEFAULT_USER {
        // A uid of the session's own, no host account: per-uid kernel counters and file
        // access never join two sessions, nor a session and a real user.
        let range = if caps.uid_map.is_empty() {
            ROOTFUL_UIDS
        } else {
            ROOTLESS_UIDS
        };
        let uid_map = caps.uid_map.clone();
        let leased =
            tokio::task::spawn_blocking(move || UidLease::acquire(range, |u| map_id(&uid_map, u)))
                .await
                .map_err(|e| Error::Agent(format!("leasing a sandbox uid: {e}")))??;
        config.user = format!("{0}:{0}", leased.uid());
        lease = Some(leased);
    }
    let owner = config.user.split_once(':').and_then(|(u, g)| {
        Some(HostOwner {
            uid: map_id(&caps.uid_map, u.parse().ok()?)?,
            gid: map_id(&caps.gid_map, g.parse().ok()?)?,
        })
    });
    let staging = tokio::task::spawn_blocking({
        let (exposures, network) = (config.exposures.clone(), config.network);
        move || Staging::prepare(&exposures, owner, network)
    })
    .await
    .map_err(|e| Error::Agent(format!("staging exposures: {e}")))??;
    let session_id = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
    let spec = ContainerSpec::new(&session_id, &config, &plan, Some(&staging))?;
    let ops = rt.launch(&spec, caps.cgroup_limits).await?;
    let relaunch = rt.relauncher(&spec, caps.cgroup_limits);
    let mut session = AgentSession::start(
        session_id,
        (ops, relaunch),
        config,
        plan,
        spec.agent_argv,
        (staging, lease),
    )
    .await?;
    session.set_image_packages(image.packages());
    Ok(Box::new(session))
}
