//! What building the sandbox image takes, whatever the engine.

use std::path::PathBuf;

/// A build of the sandbox image (python_docker/ or any folder with a Dockerfile).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BuildOptions {
    /// Build context: a folder with a Dockerfile.
    pub context: PathBuf,
    /// Tag of the result.
    pub tag: String,
    /// BASE_IMAGE build argument (any image with python3); the Dockerfile's default if None.
    pub base_image: Option<String>,
    /// A requirements.txt to use instead of the context's own.
    pub requirements: Option<PathBuf>,
}

impl BuildOptions {
    /// A build of `context` tagged `tag`, with the Dockerfile's defaults.
    pub fn new(context: impl Into<PathBuf>, tag: impl Into<String>) -> Self {
        BuildOptions {
            context: context.into(),
            tag: tag.into(),
            base_image: None,
            requirements: None,
        }
    }

    /// Checks that the context has a Dockerfile and the requirements file exists.
    pub fn validate(&self) -> crate::Result<()> {
        if !self.context.join("Dockerfile").is_file() {
            return Err(crate::Error::InvalidConfig {
                field: "build context",
                value: self.context.display().to_string(),
                reason: "no Dockerfile there; point at the python_docker folder".into(),
            });
        }
        if let Some(req) = &self.requirements {
            if !req.is_file() {
                return Err(crate::Error::InvalidConfig {
                    field: "requirements",
                    value: req.display().to_string(),
                    reason: "no such file; give a requirements.txt".into(),
                });
            }
        }
        Ok(())
    }
}

/// Receives each line of build output (an alias: trait signatures stay readable).
pub type Progress = dyn for<'line> FnMut(&'line str) + Send;
