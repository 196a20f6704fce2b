//! Building the sandbox image through the engine API.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use biocage_core::{Error, Result};
use bollard::query_parameters::BuildImageOptions;
use bollard::Docker;
use futures_util::StreamExt;

use crate::ENGINE;

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Build context: a folder with a Dockerfile (python_docker/).
    pub context: PathBuf,
    /// Tag of the result.
    pub tag: String,
    /// BASE_IMAGE build argument (any image with python3); the Dockerfile's default if None.
    pub base_image: Option<String>,
    /// Replacement requirements.txt, if any.
    pub requirements: Option<PathBuf>,
}

fn tar_context(opts: &BuildOptions) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.append_dir_all(".", &opts.context)?;
    if let Some(req) = &opts.requirements {
        builder.append_path_with_name(req, "requirements.txt")?;
    }
    builder.into_inner()
}

/// Builds the image, calling `progress` with each line of build output.
pub async fn build_image(
    docker: &Docker,
    opts: &BuildOptions,
    mut progress: impl FnMut(&str),
) -> Result<()> {
    if !Path::new(&opts.context).join("Dockerfile").is_file() {
        return Err(Error::InvalidConfig {
            field: "build context",
            value: opts.context.display().to_string(),
            reason: "no Dockerfile there; point at the python_docker folder".into(),
        });
    }
    let context = tar_context(opts)
        .map_err(|e| Error::io(format!("packing {}", opts.context.display()), e))?;
    let mut buildargs = HashMap::new();
    if let Some(base) = &opts.base_image {
        buildargs.insert("BASE_IMAGE".to_string(), base.clone());
    }
    let options = BuildImageOptions {
        t: Some(opts.tag.clone()),
        rm: true,
        forcerm: true,
        buildargs: Some(buildargs),
        ..Default::default()
    };
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(context.into())));
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| Error::engine(ENGINE, format!("building {}", opts.tag), e))?;
        if let Some(err) = info.error_detail.and_then(|d| d.message) {
            return Err(Error::engine(ENGINE, format!("building {}", opts.tag), err));
        }
        if let Some(line) = info.stream {
            let line = line.trim_end();
            if !line.is_empty() {
                progress(line);
            }
        }
    }
    Ok(())
}
