//! Images through the libpod API (the socket the sandboxes use, so a rootless service
//! builds into its own storage): builds of folders that biocage-core prepares,
//! inspection and listing.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use biocage_core::image::{FolderBuild, ImageDetails, ImageEngine, LABEL_IMAGE};
use biocage_core::{BuildEvent, BuildOptions, BuiltImage, Error, Progress, Result};
use bollard::query_parameters::BuildImageOptions;
use futures_util::StreamExt;
use podman_api::opts::{ImageListFilter, ImageListOpts, ImageTagOpts};
use podman_api::Podman;

use crate::container::is_not_found;
use crate::runtime::PodmanRuntime;
use crate::ENGINE;

/// The build side of the Podman backend. Builds go through Podman's Docker-compatible
/// endpoint on the same socket: Podman 4.3's libpod build endpoint reuses no layer
/// unless given an output format, which podman-api cannot pass, while the compatible one
/// caches as Docker does. Tags are set through the libpod API (so a short name is
/// `localhost/NAME`, as Podman's own builds name it).
struct Builder<'a> {
    compat: bollard::Docker,
    podman: &'a Podman,
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

/// True for a full image id as Podman prints it at the end of a build.
fn is_image_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
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

#[async_trait]
impl ImageEngine for Builder<'_> {
    async fn build_folder(
        &self,
        build: &FolderBuild,
        progress: &mut Progress<'_>,
    ) -> Result<String> {
        let action = match &build.tag {
            Some(tag) => format!("building {tag}"),
            None => "building an image".to_string(),
        };
        let failed = |e: &dyn std::fmt::Display| Error::engine(ENGINE, &action, e.to_string());
        let context = tar_folder(&build.context)
            .map_err(|e| Error::io(format!("packing {}", build.context.display()), e))?;
        let options = BuildImageOptions {
            rm: true,
            forcerm: true,
            nocache: build.no_cache,
            buildargs: Some(to_hash_map(&build.build_args)),
            ..Default::default()
        };
        let mut stream =
            self.compat
                .build_image(options, None, Some(bollard::body_full(context.into())));
        let mut id = None;
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| failed(&e))?;
            if let Some(err) = info.error_detail.and_then(|d| d.message) {
                return Err(failed(&err));
            }
            if let Some(line) = info.stream {
                for l in line.lines() {
                    let l = l.trim_end();
                    // The build ends with the new image's full id on a line of its own.
                    if is_image_id(l) {
                        id.get_or_insert_with(|| l.to_string());
                    } else if !l.is_empty() {
                        progress(BuildEvent::Line(l));
                    }
                }
            }
            if let Some(full) = info.aux.and_then(|aux| aux.id) {
                id = Some(full);
            }
        }
        let id = id.ok_or_else(|| failed(&"the build ended without naming an image"))?;
        if let Some(tag) = &build.tag {
            let (repo, version) = split_tag(tag);
            self.podman
                .images()
                .get(&id)
                .tag(&ImageTagOpts::builder().repo(repo).tag(version).build())
                .await
                .map_err(|e| failed(&e))?;
        }
        Ok(id)
    }
}

/// Builds what `opts` describe (see [`biocage_core::image::build`]).
pub(crate) async fn build_image(
    rt: &PodmanRuntime,
    podman: &Podman,
    opts: &BuildOptions,
    progress: &mut Progress<'_>,
) -> Result<BuiltImage> {
    let socket = rt.socket().display().to_string();
    let compat = bollard::Docker::connect_with_unix(&socket, 3600, &COMPAT_API)
        .map_err(|e| Error::engine(ENGINE, format!("connecting to {socket}"), e))?;
    biocage_core::image::build(rt, &Builder { compat, podman }, opts, progress).await
}

/// The Docker API version Podman 4's compatible endpoint speaks.
const COMPAT_API: bollard::ClientVersion = bollard::ClientVersion {
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

/// The images with BioCage's label.
pub(crate) async fn list_images(podman: &Podman) -> Result<Vec<ImageDetails>> {
    let opts = ImageListOpts::builder()
        .filter([ImageListFilter::LabelKey(LABEL_IMAGE.to_string())])
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
        assert!(is_image_id(&"a".repeat(64)));
        assert!(!is_image_id("Successfully built abc"));
    }
}
