//! Images through the engine API: builds (of folders that biocage-core prepares),
//! inspection and listing.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use biocage_core::image::{FolderBuild, ImageDetails, ImageEngine, LABEL_IMAGE};
use biocage_core::{BuildEvent, BuildOptions, BuiltImage, Error, Progress, Result};
use bollard::query_parameters::{BuildImageOptions, ListImagesOptions};
use bollard::Docker;
use futures_util::StreamExt;

use crate::container::is_not_found;
use crate::runtime::DockerRuntime;
use crate::ENGINE;

/// The build side of the Docker backend.
struct Builder<'a> {
    docker: &'a Docker,
}

/// Packs `dir` as a build context; times, owners and modes are normalized, so that the
/// engine's cache sees only names and content.
fn tar_folder(dir: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Deterministic);
    builder.append_dir_all(".", dir)?;
    builder.into_inner()
}

fn to_hash_map(map: &BTreeMap<String, String>) -> HashMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

#[async_trait]
impl ImageEngine for Builder<'_> {
    async fn build_folder(
        &self,
        build: &FolderBuild,
        progress: &mut Progress<'_>,
    ) -> Result<String> {
        let action = || match &build.tag {
            Some(tag) => format!("building {tag}"),
            None => "building an image".to_string(),
        };
        let context = tar_folder(&build.context)
            .map_err(|e| Error::io(format!("packing {}", build.context.display()), e))?;
        let options = BuildImageOptions {
            t: build.tag.clone(),
            rm: true,
            forcerm: true,
            nocache: build.no_cache,
            buildargs: Some(to_hash_map(&build.build_args)),
            ..Default::default()
        };
        let mut stream =
            self.docker
                .build_image(options, None, Some(bollard::body_full(context.into())));
        let mut id = None;
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| Error::engine(ENGINE, action(), e))?;
            if let Some(err) = info.error_detail.and_then(|d| d.message) {
                return Err(Error::engine(ENGINE, action(), err));
            }
            if let Some(line) = info.stream {
                for l in line.lines() {
                    let l = l.trim_end();
                    if !l.is_empty() {
                        progress(BuildEvent::Line(l));
                    }
                    // "Successfully built 3bfb0b328a41": the short id, if no aux came.
                    if let Some(short) = l.strip_prefix("Successfully built ") {
                        id.get_or_insert_with(|| short.trim().to_string());
                    }
                }
            }
            if let Some(full) = info.aux.and_then(|aux| aux.id) {
                id = Some(full);
            }
        }
        let id = id.ok_or_else(|| {
            Error::engine(ENGINE, action(), "the build ended without naming an image")
        })?;
        // A short id from the output: the engine knows the full one.
        match self.docker.inspect_image(&id).await {
            Ok(img) => Ok(img.id.unwrap_or(id)),
            Err(e) => Err(Error::engine(ENGINE, action(), e)),
        }
    }
}

/// Builds what `opts` describe (see [`biocage_core::image::build`]).
pub(crate) async fn build_image(
    rt: &DockerRuntime,
    opts: &BuildOptions,
    progress: &mut Progress<'_>,
) -> Result<BuiltImage> {
    let builder = Builder {
        docker: rt.client(),
    };
    biocage_core::image::build(rt, &builder, opts, progress).await
}

fn labels_of(map: Option<HashMap<String, String>>) -> BTreeMap<String, String> {
    map.unwrap_or_default().into_iter().collect()
}

/// The image's id, tags, size, user and labels; None when Docker does not hold it.
pub(crate) async fn image_details(docker: &Docker, image: &str) -> Result<Option<ImageDetails>> {
    let img = match docker.inspect_image(image).await {
        Ok(img) => img,
        Err(e) if is_not_found(&e) => return Ok(None),
        Err(e) => {
            return Err(Error::engine(
                ENGINE,
                format!("looking up image {image}"),
                e,
            ))
        }
    };
    let config = img.config.unwrap_or_default();
    Ok(Some(ImageDetails::new(
        img.id.unwrap_or_default(),
        img.repo_tags.unwrap_or_default(),
        img.size.and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
        config.user.unwrap_or_default(),
        labels_of(config.labels),
    )))
}

/// The images with BioCage's label.
pub(crate) async fn list_images(docker: &Docker) -> Result<Vec<ImageDetails>> {
    let mut filters = HashMap::new();
    filters.insert("label".to_string(), vec![LABEL_IMAGE.to_string()]);
    let list = docker
        .list_images(Some(ListImagesOptions {
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .map_err(|e| Error::engine(ENGINE, "listing images", e))?;
    Ok(list
        .into_iter()
        .map(|i| {
            ImageDetails::new(
                i.id,
                i.repo_tags
                    .into_iter()
                    .filter(|t| t != "<none>:<none>")
                    .collect(),
                u64::try_from(i.size).unwrap_or(0),
                "",
                i.labels.into_iter().collect(),
            )
        })
        .collect())
}
