//! One Docker container as [`ContainerOps`]: exec with attached stdio, state, removal.

use std::io;

use async_trait::async_trait;
use biocage_core::{AgentStreams, ContainerIdentity, ContainerOps, Error, Result};
use bollard::container::LogOutput;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use bollard::query_parameters::RemoveContainerOptions;
use bollard::Docker;
use futures_util::StreamExt;

use crate::ENGINE;

/// A sandbox container on Docker.
pub(crate) struct DockerContainer {
    pub(crate) docker: Docker,
    pub(crate) ident: ContainerIdentity,
}

pub(crate) fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

pub(crate) async fn remove_container(docker: &Docker, id: &str) -> Result<()> {
    let opts = RemoveContainerOptions {
        force: true,
        v: true,
        link: false,
    };
    match docker.remove_container(id, Some(opts)).await {
        Ok(()) => Ok(()),
        // Already gone (auto-removed when it stopped), or being removed right now.
        Err(e) if is_not_found(&e) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 409, ..
        }) => Ok(()),
        Err(e) => Err(Error::engine(ENGINE, format!("removing container {id}"), e)),
    }
}

#[async_trait]
impl ContainerOps for DockerContainer {
    fn identity(&self) -> &ContainerIdentity {
        &self.ident
    }

    async fn exec_attached(&self, argv: Vec<String>) -> Result<AgentStreams> {
        let config = ExecConfig {
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            cmd: Some(argv),
            user: Some(self.ident.user.clone()),
            ..Default::default()
        };
        let exec = self
            .docker
            .create_exec(&self.ident.id, config)
            .await
            .map_err(|e| self.ident.failed("starting the agent", e))?;
        let opts = StartExecOptions {
            detach: false,
            tty: false,
            output_capacity: None,
        };
        match self
            .docker
            .start_exec(&exec.id, Some(opts))
            .await
            .map_err(|e| self.ident.failed("attaching to the agent", e))?
        {
            StartExecResults::Attached { output, input } => {
                let name = self.ident.name.clone();
                let stdout = output
                    .filter_map(move |frame| {
                        let item = match frame {
                            Ok(LogOutput::StdOut { message }) => Some(Ok(message)),
                            Ok(LogOutput::StdErr { message }) => {
                                tracing::debug!(container = %name, "agent stderr: {}", String::from_utf8_lossy(&message).trim_end());
                                None
                            }
                            Ok(_) => None,
                            Err(e) => Some(Err(io::Error::other(e))),
                        };
                        std::future::ready(item)
                    })
                    .boxed();
                Ok(AgentStreams {
                    stdout,
                    stdin: input,
                })
            }
            StartExecResults::Detached => Err(Error::engine(
                ENGINE,
                "attaching to the agent",
                "the engine started the exec detached",
            )),
        }
    }

    async fn is_running(&self) -> Result<bool> {
        match self.docker.inspect_container(&self.ident.id, None).await {
            Ok(info) => Ok(info.state.and_then(|s| s.running).unwrap_or(false)),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(Error::engine(ENGINE, "inspecting the container", e)),
        }
    }

    async fn remove(&self) -> Result<()> {
        remove_container(&self.docker, &self.ident.id).await
    }
}
