//! Read-write exposures. Each is a size- and file-capped tmpfs inside the sandbox,
//! filled from the host folder when the session starts; after every run and at close,
//! what sandbox code changed there is copied back into the host folder by this (host)
//! process, through the agent. Nothing a sandbox writes ever lives on a host
//! filesystem: no setuid file, device or link can reach the host, the host's disk
//! cannot fill, and results belong to the host user (new files readable by it alone).
//! Host paths are opened component by component without following links.

use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use crate::channel::AgentChannel;
use crate::config::{Exposure, SandboxConfig, RW_MAX_DEPTH, RW_MAX_PATH};
use crate::error::{Error, Result};
use crate::hostfs::{self, open_dir_below, remove_below, split, Listed};
use crate::protocol::{Change, ChangeKind, FilePath, Reply, Request};

/// Bytes moved per request while filling or copying back.
const CHUNK: u64 = 4 << 20;
/// Deadline of one mirroring request.
const WAIT: Duration = Duration::from_secs(60);
/// Changes asked for per request.
const PAGE: usize = 2000;
/// Longest page of changes (each a path of at most RW_MAX_PATH bytes in base64).
pub(crate) const PAGE_BYTES: usize = PAGE * (RW_MAX_PATH * 4 / 3 + 128);
/// Names listed in a note about entries that were not copied back.
const NOTE_NAMES: usize = 3;

/// The read-write exposures of one session, host side.
#[derive(Debug, Clone)]
pub(crate) struct RwMirror {
    exposures: Vec<Exposure>,
    max_bytes: u64,
    max_files: u32,
}

fn io_err(action: String) -> impl FnOnce(io::Error) -> Error {
    move |e| Error::io(action, e)
}

fn agent_err(e: impl std::fmt::Display) -> Error {
    Error::Agent(e.to_string())
}

/// The path `target/rel` inside the sandbox, as the agent's base64 bytes.
fn sandbox_path(target: &str, rel: &Path) -> String {
    let mut raw = target.trim_end_matches('/').as_bytes().to_vec();
    if !rel.as_os_str().is_empty() {
        raw.push(b'/');
        raw.extend_from_slice(rel.as_os_str().as_bytes());
    }
    BASE64.encode(raw)
}

async fn ask(channel: &AgentChannel, req: Request) -> Result<Reply> {
    channel.call(&req, WAIT).await
}

impl RwMirror {
    /// The read-write exposures of `config`, or `None` when it has none.
    pub(crate) fn of(config: &SandboxConfig) -> Option<Self> {
        let exposures: Vec<Exposure> = config
            .exposures
            .iter()
            .filter(|e| e.mode == crate::config::ExposureMode::ReadWrite)
            .cloned()
            .collect();
        (!exposures.is_empty()).then_some(RwMirror {
            exposures,
            max_bytes: config.rw_exposure_bytes,
            max_files: config.rw_exposure_files,
        })
    }

    /// Copies each host folder into its tmpfs and starts tracking changes. Refuses a
    /// folder over the size or file caps, with what to change.
    pub(crate) async fn fill(&self, channel: &AgentChannel) -> Result<()> {
        for e in &self.exposures {
            let (host, max_bytes, max_files) = (e.host.clone(), self.max_bytes, self.max_files);
            let entries =
                tokio::task::spawn_blocking(move || list_host(&host, max_bytes, max_files))
                    .await
                    .map_err(agent_err)??;
            for entry in entries {
                let path = sandbox_path(&e.container, &entry.rel);
                if entry.dir {
                    ask(
                        channel,
                        Request::MakeDir {
                            path: FilePath::P64(path),
                            mode: entry.mode,
                        },
                    )
                    .await?;
                    continue;
                }
                let mut offset = 0;
                loop {
                    let (root, listed, at) = (e.host.clone(), entry.clone(), offset);
                    let data = tokio::task::spawn_blocking(move || read_chunk(&root, &listed, at))
                        .await
                        .map_err(agent_err)??;
                    let len = data.len() as u64;
                    ask(
                        channel,
                        Request::WriteFile {
                            path: FilePath::P64(path.clone()),
                            data: BASE64.encode(&data),
                            offset: Some(offset),
                            mode: Some(entry.mode),
                        },
                    )
                    .await?;
                    offset += len;
                    if len == 0 || offset >= entry.size {
                        break;
                    }
                }
            }
        }
        self.begin(channel).await
    }

    /// The note for a run after which the sandbox was replaced: what sandbox code wrote
    /// in the read-write exposures since the last copy-back was in the old sandbox, and
    /// nothing there could be trusted to list it.
    pub(crate) fn lost_note(&self) -> String {
        let roots: Vec<String> = self
            .exposures
            .iter()
            .map(|e| format!("{} (host {})", e.container, e.host.display()))
            .collect();
        format!(
            "[biocage] NOT copied back: whatever this run wrote in {} after the last copy-back was lost with the replaced sandbox; the host folders hold what earlier runs wrote, and the new sandbox starts from them\n",
            roots.join(", ")
        )
    }

    /// Starts tracking changes from what the tmpfs holds now (just filled).
    async fn begin(&self, channel: &AgentChannel) -> Result<()> {
        let roots = self.exposures.iter().map(|e| e.container.clone()).collect();
        ask(
            channel,
            Request::SyncBegin {
                roots,
                max_entries: self.max_files,
                max_depth: RW_MAX_DEPTH,
                max_path: RW_MAX_PATH,
            },
        )
        .await?;
        Ok(())
    }

    /// Copies back what changed since the last time; returns a note (for the run's
    /// stderr) about what could not be copied, capped in length.
    pub(crate) async fn sync(&self, channel: &AgentChannel) -> Result<Option<String>> {
        let mut notes = Notes::default();
        let mut budget = vec![self.max_bytes; self.exposures.len()];
        let mut more = false;
        loop {
            let page = ask(
                channel,
                Request::Sync {
                    next: more,
                    page: PAGE,
                },
            )
            .await?;
            if !more {
                notes.agent(&page);
            }
            let mut forget = Vec::new();
            for change in &page.changes {
                if let Err(why) = self.apply(channel, change, &mut budget).await {
                    notes.failed(change, why);
                    forget.push(change.path.clone());
                }
            }
            if !forget.is_empty() {
                ask(channel, Request::SyncForget { paths: forget }).await?;
            }
            more = page.more;
            if !more {
                return Ok(notes.text());
            }
        }
    }

    async fn apply(
        &self,
        channel: &AgentChannel,
        change: &Change,
        budget: &mut [u64],
    ) -> std::result::Result<(), String> {
        let idx = usize::try_from(change.path.root).ok();
        let Some((e, left)) = idx.and_then(|i| Some((self.exposures.get(i)?, budget.get_mut(i)?)))
        else {
            return Err("unknown exposure".into());
        };
        let raw = BASE64.decode(&change.path.p64).map_err(|e| e.to_string())?;
        let rel = checked_rel(&raw)?;
        let root = e.host.clone();
        match change.kind {
            ChangeKind::Dir => blocking(move || open_dir_below(&root, &rel, true).map(drop)).await,
            ChangeKind::Gone => blocking(move || remove_below(&root, &rel)).await,
            ChangeKind::File => {
                let size = change.size;
                if size > *left {
                    return Err(format!(
                        "{size} bytes (apparent size) would pass the {}-byte cap of what a run copies back",
                        self.max_bytes
                    ));
                }
                *left -= size;
                let mode = change
                    .mode
                    .map_or(0o600, |m| u32::try_from(m).unwrap_or(0o600));
                let file = {
                    let (root, rel) = (root.clone(), rel.clone());
                    blocking(move || create_below(&root, &rel, mode)).await?
                };
                let mut offset = 0;
                while offset < size {
                    let length = CHUNK.min(size - offset);
                    let reply = ask(
                        channel,
                        Request::ReadFile {
                            path: FilePath::P64(sandbox_path(&e.container, &rel)),
                            offset: Some(offset),
                            length: Some(length),
                            max_bytes: CHUNK,
                        },
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                    let data = BASE64
                        .decode(reply.data.unwrap_or_default())
                        .map_err(|e| e.to_string())?;
                    if data.is_empty() {
                        break; // shrank meanwhile: the next scan sees it
                    }
                    let (f, at) = (file.try_clone().map_err(|e| e.to_string())?, offset);
                    blocking(move || write_sparse(&f, &data, at)).await?;
                    offset += length;
                }
                blocking(move || file.set_len(size)).await
            }
            ChangeKind::Unknown => Err("unknown change".into()),
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> std::result::Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Writes `data` at `offset`, leaving all-zero stretches as holes (sparse stays sparse).
fn write_sparse(file: &fs::File, data: &[u8], offset: u64) -> io::Result<()> {
    const BLOCK: usize = 64 << 10;
    for (i, block) in data.chunks(BLOCK).enumerate() {
        if block.iter().any(|b| *b != 0) {
            file.write_all_at(block, offset + (i * BLOCK) as u64)?;
        }
    }
    Ok(())
}

/// What could not be copied back this time, for the run's stderr.
#[derive(Default)]
struct Notes {
    lines: Vec<String>,
    failed: usize,
    names: Vec<String>,
}

impl Notes {
    fn agent(&mut self, page: &Reply) {
        if page.skipped > 0 {
            self.lines.push(format!(
                "{} links or special files were not copied back",
                page.skipped
            ));
        }
        if page.too_deep > 0 {
            self.lines.push(format!(
                "{} folders nested deeper than {RW_MAX_DEPTH} levels were not copied back",
                page.too_deep
            ));
        }
        if page.too_long > 0 {
            self.lines.push(format!(
                "{} entries with paths over {RW_MAX_PATH} bytes were not copied back",
                page.too_long
            ));
        }
        if page.too_many {
            self.lines.push(
                "the file-count cap was reached; entries past it were not copied back".into(),
            );
        }
    }

    fn failed(&mut self, change: &Change, why: String) {
        self.failed += 1;
        if self.names.len() < NOTE_NAMES {
            let raw = BASE64.decode(&change.path.p64).unwrap_or_default();
            let mut name = String::from_utf8_lossy(&raw).to_string();
            name.truncate(200);
            let mut why = why;
            why.truncate(200);
            self.names.push(format!("{name:?}: {why}"));
        }
    }

    fn text(mut self) -> Option<String> {
        if self.failed > 0 {
            self.lines.push(format!(
                "{} entries could not be copied back (tried again after the next run): {}{}",
                self.failed,
                self.names.join("; "),
                if self.failed > self.names.len() {
                    "; ..."
                } else {
                    ""
                }
            ));
        }
        (!self.lines.is_empty()).then(|| format!("[biocage] {}\n", self.lines.join("; ")))
    }
}

/// A relative path from the agent: plain names only (no "..", ".", empty or absolute
/// parts), within the depth and length caps.
fn checked_rel(raw: &[u8]) -> std::result::Result<PathBuf, String> {
    let path = PathBuf::from(std::ffi::OsString::from_vec(raw.to_vec()));
    let plain = path.components().all(|c| matches!(c, Component::Normal(_)));
    let depth = path.components().count();
    if raw.is_empty()
        || raw.contains(&0)
        || !plain
        || raw.len() > RW_MAX_PATH
        || depth > RW_MAX_DEPTH as usize + 1
    {
        return Err("not a plain relative path within the caps".into());
    }
    Ok(path)
}

/// Creates or truncates the file `rel` below `root` (never through a link). A new file
/// gets the owner bits the sandbox gave it, no more (at least read and write); an
/// existing one keeps its mode, less setuid, setgid and sticky.
fn create_below(root: &Path, rel: &Path, sandbox_mode: u32) -> io::Result<fs::File> {
    use rustix::fs::{Mode, OFlags};
    let (parent, name) = split(rel)?;
    let dir = open_dir_below(root, parent, true)?;
    let mode = Mode::from_raw_mode((sandbox_mode & 0o700) | 0o600);
    let flags = OFlags::WRONLY
        | OFlags::CREATE
        | OFlags::TRUNC
        | OFlags::NONBLOCK
        | OFlags::NOFOLLOW
        | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(&dir, name, flags, mode) {
        Err(rustix::io::Errno::ISDIR) => {
            remove_below(root, rel)?;
            rustix::fs::openat(&dir, name, flags, mode)?
        }
        other => other?,
    };
    let file = fs::File::from(fd);
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other("not a regular file on the host"));
    }
    if meta.mode() & 0o7000 != 0 {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o777))?;
    }
    Ok(file)
}

/// The entries of a host folder to copy in (folders first), without following links;
/// refuses a folder over the caps.
fn list_host(root: &Path, max_bytes: u64, max_files: u32) -> Result<Vec<Listed>> {
    let mut total = 0u64;
    let mut count = 0usize;
    let over = || {
        Error::InvalidConfig {
        field: "read-write exposure",
        value: root.display().to_string(),
        reason: format!(
            "it holds more than the sandbox copy can ({max_bytes} bytes, {max_files} files, {RW_MAX_DEPTH} levels); raise rw_exposure_bytes / rw_exposure_files, or expose it read-only"
        ),
    }
    };
    let mut out = hostfs::walk(root, |e: &Listed| -> std::result::Result<(), WalkError> {
        total += if e.dir { 0 } else { e.size };
        count += 1;
        if total > max_bytes
            || count > max_files as usize
            || e.rel.components().count() > RW_MAX_DEPTH as usize
        {
            return Err(WalkError::Over(over()));
        }
        Ok(())
    })
    .map_err(|e| match e {
        WalkError::Over(e) => e,
        WalkError::Io(e) => Error::io(format!("listing {}", root.display()), e),
    })?;
    out.sort_by_key(|e| (!e.dir, e.rel.components().count()));
    Ok(out)
}

/// Why a walk of a host folder stopped.
enum WalkError {
    Over(Error),
    Io(io::Error),
}

impl From<io::Error> for WalkError {
    fn from(e: io::Error) -> Self {
        WalkError::Io(e)
    }
}

fn read_chunk(root: &Path, entry: &Listed, offset: u64) -> Result<Vec<u8>> {
    let path = root.join(&entry.rel);
    let file =
        hostfs::open_listed(root, entry).map_err(io_err(format!("reading {}", path.display())))?;
    let left = file
        .metadata()
        .map_err(io_err(format!("reading {}", path.display())))?
        .len()
        .saturating_sub(offset);
    let mut data = vec![0; usize::try_from(left.min(CHUNK)).unwrap_or(0)];
    let mut done = 0;
    while done < data.len() {
        let n = file
            .read_at(&mut data[done..], offset + done as u64)
            .map_err(io_err(format!("reading {}", path.display())))?;
        if n == 0 {
            break;
        }
        done += n;
    }
    data.truncate(done);
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_from_the_agent_are_checked() {
        for bad in [&b""[..], b"/etc/passwd", b"a/../../x", b"./a", b"a\0b"] {
            assert!(checked_rel(bad).is_err(), "{bad:?}");
        }
        assert!(checked_rel(&vec![b'a'; RW_MAX_PATH + 1]).is_err());
        let deep = vec!["d"; RW_MAX_DEPTH as usize + 2].join("/");
        assert!(checked_rel(deep.as_bytes()).is_err());
        assert_eq!(
            checked_rel(b"a/b\xff").unwrap(),
            PathBuf::from(std::ffi::OsString::from_vec(b"a/b\xff".to_vec()))
        );
    }

    #[test]
    fn host_writes_never_follow_links() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("link")).unwrap();
        // The sandbox's folder replaces the host's link; nothing goes through it.
        let _ = create_below(root.path(), Path::new("link/passwd"), 0o644);
        let _ = open_dir_below(root.path(), Path::new("link/x"), true);
        assert!(fs::read_dir(outside.path()).unwrap().next().is_none());
        assert!(!fs::symlink_metadata(root.path().join("link"))
            .unwrap()
            .file_type()
            .is_symlink());
        std::os::unix::fs::symlink("/etc/hostname", root.path().join("f")).unwrap();
        assert!(create_below(root.path(), Path::new("f"), 0o644).is_err());
        let f = create_below(root.path(), Path::new("new/dir/file"), 0o4777).unwrap();
        write_sparse(&f, &[0u8; 1 << 20], 0).unwrap();
        f.set_len(1 << 30).unwrap();
        let meta = fs::metadata(root.path().join("new/dir/file")).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o700, "owner bits only, no setuid");
        assert!(
            meta.blocks() < 64,
            "sparse stays sparse: {} blocks",
            meta.blocks()
        );
        remove_below(root.path(), Path::new("new/dir/file")).unwrap();
        remove_below(root.path(), Path::new("new/dir")).unwrap();
        assert!(!root.path().join("new/dir").exists());
    }

    #[test]
    fn host_folders_over_the_caps_are_refused() {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("a"), vec![1u8; 4096]).unwrap();
        fs::create_dir(root.path().join("d")).unwrap();
        fs::write(root.path().join("d/b"), "b").unwrap();
        std::os::unix::fs::symlink("/etc", root.path().join("l")).unwrap();
        let entries = list_host(root.path(), 1 << 20, 16).unwrap();
        assert_eq!(entries.len(), 3, "links are not copied in");
        assert!(entries[0].dir, "folders first");
        let err = list_host(root.path(), 1024, 16).unwrap_err().to_string();
        assert!(err.contains("rw_exposure_bytes"), "{err}");
        assert!(list_host(root.path(), 1 << 20, 2).is_err());
    }
}
