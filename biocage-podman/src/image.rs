//! Images through the libpod API (the socket the sandboxes use, so a rootless service
//! builds into its own storage): builds of folders that biocage-core prepares,
//! inspection and listing.

use std::collections::{BTreeMap, HashMap};

use biocage_core::image::{FolderBuild, ImageDetails};
use biocage_core::{BuildChunk, Error, Result};
use bollard::query_parameters::BuildImageOptions;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use podman_api::opts::{ImageListFilter, ImageListOpts, ImageTagOpts};
use podman_api::Podman;

use crate::engine::is_not_found;
use crate::ENGINE;

fn to_hash_map(map: &BTreeMap<String, String>) -> HashMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// "localhost/biocage-tab:1" as ("localhost/biocage-tab", "1"); the tag is "latest" when
/// none is given.
fn split_tag(name: &str) -> (&str, &str) {
    let slash = name.rfind('/').map_or(0, |i| i + 1);
    match name[slash..].rfind(':') {
        Some(i) => (&name[..slash + i], &name[slash + i + 1..]),
        None => (name, "latest"),
    }
}

/// Builds `build` through Podman's Docker-compatible endpoint on the same socket, untagged
/// ([`tag`] names it after). Podman 4.3's libpod build endpoint reuses no layer unless
/// given an output format, which podman-api cannot pass, while the compatible one caches
/// as Docker does.
pub(crate) fn build_stream<'a>(
    compat: &'a bollard::Docker,
    build: &FolderBuild,
    context: Vec<u8>,
) -> BoxStream<'a, Result<BuildChunk>> {
    let options = BuildImageOptions {
        rm: true,
        forcerm: true,
        nocache: build.no_cache,
        buildargs: Some(to_hash_map(&build.build_args)),
        ..Default::default()
    };
    let chunk = |info: bollard::models::BuildInfo| {
        let id = info.aux.and_then(|aux| aux.id);
        BuildChunk::new(info.stream, info.error_detail.and_then(|d| d.message), id)
    };
    compat
        .build_image(options, None, Some(bollard::body_full(context.into())))
        .map(move |item| {
            item.map(chunk)
                .map_err(|e| Error::engine(ENGINE, "building", e))
        })
        .boxed()
}

/// Tags the image `id` as `build` asks, through the libpod API (so a short name is
/// `localhost/NAME`, as Podman's own builds name it); returns the id.
pub(crate) async fn tag(podman: &Podman, build: &FolderBuild, id: String) -> Result<String> {
    if let Some(tag) = &build.tag {
        let (repo, version) = split_tag(tag);
        podman
            .images()
            .get(&id)
            .tag(&ImageTagOpts::builder().repo(repo).tag(version).build())
            .await
            .map_err(|e| Error::engine(ENGINE, format!("tagging {id} as {tag}"), e))?;
    }
    Ok(id)
}

/// The Docker API version Podman 4's compatible endpoint speaks.
pub(crate) const COMPAT_API: bollard::ClientVersion = bollard::ClientVersion {
    major_version: 1,
    minor_version: 41,
};

/// "sha256:HEX" for Podman's bare ids.
fn full_id(id: String) -> String {
    if id.starts_with("sha256:") {
        id
    } else {
        format!("sha256:{id}")
    }
}

/// The image's id, tags, size, user and labels; None when Podman does not hold it.
pub(crate) async fn image_details(podman: &Podman, image: &str) -> Result<Option<ImageDetails>> {
    let img =
        match podman.images().get(image).inspect().await {
            Ok(img) => img,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(podman_api::Error::SerdeJsonError(e)) => {
                // An answer podman-api's model does not parse (another Podman version):
                // whether the image is there still decides whether sessions can start.
                tracing::warn!(
                    "podman's inspection of {image} did not parse ({e}); its labels are not read"
                );
                let exists =
                    podman.images().get(image).exists().await.map_err(|e| {
                        Error::engine(ENGINE, format!("looking up image {image}"), e)
                    })?;
                return Ok(exists.then(|| {
                    ImageDetails::new(image, vec![image.to_string()], 0, "", BTreeMap::new())
                }));
            }
            Err(e) => {
                return Err(Error::engine(
                    ENGINE,
                    format!("looking up image {image}"),
                    e,
                ))
            }
        };
    let (user, config_labels) = match img.config {
        Some(c) => (c.user, c.labels),
        None => (None, None),
    };
    let labels: BTreeMap<String, String> = config_labels
        .or(img.labels)
        .unwrap_or_default()
        .into_iter()
        .collect();
    Ok(Some(ImageDetails::new(
        full_id(img.id.unwrap_or_default()),
        img.repo_tags.unwrap_or_default(),
        img.size.and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
        user.unwrap_or_default(),
        labels,
    )))
}

/// The images that carry `label`.
pub(crate) async fn list_images(podman: &Podman, label: &str) -> Result<Vec<ImageDetails>> {
    let opts = ImageListOpts::builder()
        .filter([ImageListFilter::LabelKey(label.to_string())])
        .build();
    let list = podman
        .images()
        .list(&opts)
        .await
        .map_err(|e| Error::engine(ENGINE, "listing images", e))?;
    Ok(list
        .into_iter()
        .map(|i| {
            ImageDetails::new(
                full_id(i.id.unwrap_or_default()),
                i.repo_tags.unwrap_or_default(),
                i.size.and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                "",
                i.labels.unwrap_or_default().into_iter().collect(),
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_split_into_repository_and_tag() {
        assert_eq!(split_tag("biocage-tab:1"), ("biocage-tab", "1"));
        assert_eq!(split_tag("biocage-tab"), ("biocage-tab", "latest"));
        assert_eq!(
            split_tag("localhost:5000/x/biocage"),
            ("localhost:5000/x/biocage", "latest")
        );
        assert_eq!(split_tag("localhost/b:v2"), ("localhost/b", "v2"));
    }
}
