//! One Podman container as [`ContainerOps`]: exec with attached stdio, state, removal.

use std::io;

use async_trait::async_trait;
use biocage_core::{AgentStreams, ContainerIdentity, ContainerOps, Error, Result};
use futures_util::StreamExt;
use podman_api::conn::TtyChunk;
use podman_api::opts::{ContainerListFilter, ContainerListOpts, ExecCreateOpts, ExecStartOpts};
use podman_api::Podman;
use tokio_util::compat::FuturesAsyncWriteCompatExt;

use crate::ENGINE;

/// A sandbox container on Podman.
pub(crate) struct PodmanContainer {
    pub(crate) podman: Podman,
    pub(crate) ident: ContainerIdentity,
}

pub(crate) fn is_not_found(e: &podman_api::Error) -> bool {
    matches!(e, podman_api::Error::Fault { code, .. } if code.as_u16() == 404)
}

pub(crate) async fn remove_container(podman: &Podman, id: &str) -> Result<()> {
    match podman.containers().get(id).remove().await {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        // Being removed right now (auto-removal after it stopped).
        Err(podman_api::Error::Fault { code, .. }) if code.as_u16() == 409 => Ok(()),
        Err(e) => Err(Error::engine(ENGINE, format!("removing container {id}"), e)),
    }
}

/// The state of one container by id, from the list call (inspect breaks on Podman 5).
pub(crate) async fn container_state(podman: &Podman, id: &str) -> Result<Option<String>> {
    let opts = ContainerListOpts::builder()
        .all(true)
        .filter([ContainerListFilter::Id(id.to_string().into())])
        .build();
    let list = podman
        .containers()
        .list(&opts)
        .await
        .map_err(|e| Error::engine(ENGINE, "listing containers", e))?;
    Ok(list.into_iter().next().and_then(|c| c.state))
}

#[async_trait]
impl ContainerOps for PodmanContainer {
    fn identity(&self) -> &ContainerIdentity {
        &self.ident
    }

    async fn exec_attached(&self, argv: Vec<String>) -> Result<AgentStreams> {
        let opts = ExecCreateOpts::builder()
            .command(argv)
            .attach_stdin(true)
            .attach_stdout(true)
            .attach_stderr(true)
            .tty(false)
            .user(podman_api::opts::UserOpt::User(self.ident.user.clone()))
            .build();
        let exec = self
            .podman
            .containers()
            .get(&self.ident.id)
            .create_exec(&opts)
            .await
            .map_err(|e| self.ident.failed("starting the agent", e))?;
        let mux = exec
            .start(&ExecStartOpts::builder().detach(false).build())
            .await
            .map_err(|e| self.ident.failed("attaching to the agent", e))?
            .ok_or_else(|| {
                Error::engine(
                    ENGINE,
                    "attaching to the agent",
                    "the exec started detached",
                )
            })?;
        let (reader, writer) = mux.split();
        let name = self.ident.name.clone();
        let stdout = reader
            .filter_map(move |chunk| {
                let item = match chunk {
                    Ok(TtyChunk::StdOut(bytes)) => Some(Ok(bytes::Bytes::from(bytes))),
                    Ok(TtyChunk::StdErr(bytes)) => {
                        tracing::debug!(container = %name, "agent stderr: {}", String::from_utf8_lossy(&bytes).trim_end());
                        None
                    }
                    Ok(TtyChunk::StdIn(_)) => None,
                    Err(e) => Some(Err(io::Error::other(e))),
                };
                std::future::ready(item)
            })
            .boxed();
        Ok(AgentStreams {
            stdout,
            stdin: Box::pin(writer.compat_write()),
        })
    }

    async fn is_running(&self) -> Result<bool> {
        Ok(container_state(&self.podman, &self.ident.id)
            .await?
            .as_deref()
            == Some("running"))
    }

    async fn remove(&self) -> Result<()> {
        remove_container(&self.podman, &self.ident.id).await
    }
}
