//! Building the sandbox image through the libpod API.

use biocage_core::{BuildOptions, Error, Result};
use futures_util::StreamExt;
use podman_api::opts::ImageBuildOpts;
use podman_api::Podman;

use crate::ENGINE;

/// Builds the image, calling `progress` with each line of build output.
pub(crate) async fn build_image(
    podman: &Podman,
    opts: &BuildOptions,
    progress: &mut biocage_core::Progress,
) -> Result<()> {
    opts.validate()?;
    let failed =
        |e: &dyn std::fmt::Display| Error::engine(ENGINE, format!("building {}", opts.tag), e);
    // The API takes a folder: with a replacement requirements.txt, build from a copy.
    let staged = match &opts.requirements {
        Some(req) => {
            Some(stage_context(opts, req).map_err(|e| Error::io("copying the build context", e))?)
        }
        None => None,
    };
    let context = staged
        .as_ref()
        .map(|d| d.path().to_path_buf())
        .unwrap_or_else(|| opts.context.clone());
    let mut b = ImageBuildOpts::builder(context.display().to_string()).tag(&opts.tag);
    if let Some(base) = &opts.base_image {
        b = b.build_args([("BASE_IMAGE", base.as_str())]);
    }
    let build = b.build();
    let images = podman.images();
    let mut stream = images.build(&build).map_err(|e| failed(&e))?;
    while let Some(item) = stream.next().await {
        let report = item.map_err(|e| failed(&e))?;
        let line = report.stream.trim_end();
        if !line.is_empty() {
            progress(line);
        }
    }
    Ok(())
}

fn stage_context(opts: &BuildOptions, req: &std::path::Path) -> std::io::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    copy_dir(&opts.context, dir.path())?;
    std::fs::copy(req, dir.path().join("requirements.txt"))?;
    Ok(dir)
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            std::fs::create_dir_all(&target)?;
            copy_dir(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}
