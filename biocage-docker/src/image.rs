//! Images through the engine API: builds (of folders that biocage-core prepares and
//! packs), inspection and listing.

use std::collections::{BTreeMap, HashMap};

use biocage_core::image::{FolderBuild, ImageDetails};
use biocage_core::{BuildChunk, Error, Result};
use bollard::query_parameters::{BuildImageOptions, ListImagesOptions};
use bollard::Docker;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;

use crate::engine::is_not_found;
use crate::ENGINE;

fn to_hash_map(map: &BTreeMap<String, String>) -> HashMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Builds `build` from its packed `context`, tagged by the engine, streaming the output.
pub(crate) fn build_stream<'a>(
    docker: &'a Docker,
    build: &FolderBuild,
    context: Vec<u8>,
) -> BoxStream<'a, Result<BuildChunk>> {
    let options = BuildImageOptions {
        t: build.tag.clone(),
        rm: true,
        forcerm: true,
        nocache: build.no_cache,
        buildargs: Some(to_hash_map(&build.build_args)),
        ..Default::default()
    };
    docker
        .build_image(options, None, Some(bollard::body_full(context.into())))
        .map(|item| {
            let info = item.map_err(|e| Error::engine(ENGINE, "building an image", e))?;
            let error = info.error_detail.and_then(|d| d.message);
            Ok(BuildChunk::new(
                info.stream,
                error,
                info.aux.and_then(|a| a.id),
            ))
        })
        .boxed()
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

/// The images that carry `label`.
pub(crate) async fn list_images(docker: &Docker, label: &str) -> Result<Vec<ImageDetails>> {
    let mut filters = HashMap::new();
    filters.insert("label".to_string(), vec![label.to_string()]);
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
