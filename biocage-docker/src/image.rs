//! Building the sandbox image through the engine API.

use biocage_core::Error;
use biocage_core::{BuildOptions, Result};
use bollard::query_parameters::BuildImageOptions;
use bollard::Docker;
use futures_util::StreamExt;
use std::collections::HashMap;

use crate::ENGINE;

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
pub(crate) async fn build_image(
    docker: &Docker,
    opts: &BuildOptions,
    progress: &mut biocage_core::Progress,
) -> Result<()> {
    opts.validate()?;
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
