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
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use crate::channel::AgentChannel;
use crate::config::{Exposure, SandboxConfig, RW_MAX_DEPTH, RW_MAX_PATH};
use crate::error::{Error, Result};
use crate::hostfs::{self, open_dir_below, peek_below, remove_below, Listed, Replacement};
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
    /// What each host folder holds now, as the host counted it: copy-back never takes
    /// one past the caps, whatever the agent reports.
    usage: std::sync::Arc<std::sync::Mutex<Vec<Usage>>>,
}

/// The size of one host folder: bytes of its files, and its entries.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    bytes: u64,
    entries: u64,
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
            usage: std::sync::Arc::new(std::sync::Mutex::new(vec![
                Usage::default();
                exposures.len()
            ])),
            exposures,
            max_bytes: config.rw_exposure_bytes,
            max_files: config.rw_exposure_files,
        })
    }

    /// Copies each host folder into its tmpfs and starts tracking changes. Refuses a
    /// folder over the size or file caps, with what to change.
    pub(crate) async fn fill(&self, channel: &AgentChannel) -> Result<()> {
        for (i, e) in self.exposures.iter().enumerate() {
            let (host, max_bytes, max_files) = (e.host.clone(), self.max_bytes, self.max_files);
            let entries =
                tokio::task::spawn_blocking(move || list_host(&host, max_bytes, max_files))
                    .await
                    .map_err(agent_err)??;
            let counted = Usage {
                bytes: entries.iter().filter(|x| !x.dir).map(|x| x.size).sum(),
                entries: entries.len() as u64,
            };
            if let Some(u) = self
                .usage
                .lock()
                .ok()
                .as_deref_mut()
                .and_then(|v| v.get_mut(i))
            {
                *u = counted;
            }
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
        let before = {
            let (root, rel) = (root.clone(), rel.clone());
            blocking(move || peek_below(&root, &rel)).await?
        };
        let (old_bytes, old_entry) = match before {
            Some((dir, size)) => (if dir { 0 } else { size }, 1),
            None => (0, 0),
        };
        let (new_bytes, new_entry) = match change.kind {
            ChangeKind::File => (change.size, 1),
            ChangeKind::Dir => (0, 1),
            _ => (0, 0),
        };
        // The host folder after this change stays within the caps.
        let idx = idx.unwrap_or_default();
        self.account(idx, (old_bytes, old_entry), (new_bytes, new_entry))?;
        let done = match change.kind {
            ChangeKind::Dir => blocking(move || open_dir_below(&root, &rel, true).map(drop)).await,
            ChangeKind::Gone => blocking(move || remove_below(&root, &rel)).await,
            ChangeKind::File => self.copy_file(channel, e, rel, change, left).await,
            ChangeKind::Unknown => Err("unknown change".into()),
        };
        if done.is_err() {
            // Not applied: the host folder is as it was.
            let _ = self.account(idx, (new_bytes, new_entry), (old_bytes, old_entry));
        }
        done
    }

    /// Moves the host's count of folder `idx` from `old` (bytes, entries) to `new`,
    /// refusing a change that would take it past the caps.
    fn account(
        &self,
        idx: usize,
        old: (u64, u64),
        new: (u64, u64),
    ) -> std::result::Result<(), String> {
        let mut usage = self
            .usage
            .lock()
            .map_err(|_| "usage lock poisoned".to_string())?;
        let u = usage.get_mut(idx).ok_or("unknown exposure")?;
        let bytes = (u.bytes.saturating_sub(old.0)).saturating_add(new.0);
        let entries = (u.entries.saturating_sub(old.1)).saturating_add(new.1);
        if (bytes > self.max_bytes && new.0 > old.0)
            || (entries > u64::from(self.max_files) && new.1 > old.1)
        {
            return Err(format!(
                "{} bytes (apparent size) would take the host folder past its caps ({} bytes, {} entries; rw_exposure_bytes / rw_exposure_files)",
                new.0, self.max_bytes, self.max_files
            ));
        }
        u.bytes = bytes;
        u.entries = entries;
        Ok(())
    }

    /// Copies one file back: into a new file beside it, renamed over the old one only
    /// once complete, so that a failure (a full disk) leaves the old version whole.
    async fn copy_file(
        &self,
        channel: &AgentChannel,
        e: &Exposure,
        rel: PathBuf,
        change: &Change,
        left: &mut u64,
    ) -> std::result::Result<(), String> {
        let root = e.host.clone();
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
            blocking(move || Replacement::begin(&root, &rel, mode)).await?
        };
        let file = std::sync::Arc::new(file);
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
            let (f, at) = (file.clone(), offset);
            blocking(move || write_sparse(f.file()?, &data, at)).await?;
            offset += length;
        }
        let file =
            std::sync::Arc::try_unwrap(file).map_err(|_| "the copy is still in use".to_string())?;
        blocking(move || {
            file.file()?.set_len(size)?;
            file.commit()
        })
        .await
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
    use std::os::unix::fs::MetadataExt;

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
        if let Ok(r) = Replacement::begin(root.path(), Path::new("link/passwd"), 0o644) {
            let _ = r.commit();
        }
        let _ = open_dir_below(root.path(), Path::new("link/x"), true);
        assert!(fs::read_dir(outside.path()).unwrap().next().is_none());
        assert!(!fs::symlink_metadata(root.path().join("link"))
            .unwrap()
            .file_type()
            .is_symlink());
        // A host link where a file goes is replaced, never written through.
        let hostname = fs::read("/etc/hostname").unwrap_or_default();
        std::os::unix::fs::symlink("/etc/hostname", root.path().join("f")).unwrap();
        let r = Replacement::begin(root.path(), Path::new("f"), 0o644).unwrap();
        r.file().unwrap().write_all_at(b"mine", 0).unwrap();
        r.commit().unwrap();
        assert_eq!(fs::read_to_string(root.path().join("f")).unwrap(), "mine");
        assert_eq!(fs::read("/etc/hostname").unwrap_or_default(), hostname);
        let r = Replacement::begin(root.path(), Path::new("new/dir/file"), 0o4777).unwrap();
        write_sparse(r.file().unwrap(), &[0u8; 1 << 20], 0).unwrap();
        r.file().unwrap().set_len(1 << 30).unwrap();
        r.commit().unwrap();
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
    fn copy_back_never_takes_a_host_folder_past_its_caps() {
        let dir = tempfile::tempdir().unwrap();
        let config = SandboxConfig::builder()
            .expose_rw(dir.path(), "/data/out")
            .rw_exposure_bytes(1 << 20)
            .rw_exposure_files(16)
            .build()
            .unwrap();
        let m = RwMirror::of(&config).unwrap();
        // Whatever the agent reports, run after run: a new 600 KiB file fits once.
        assert!(m.account(0, (0, 0), (600 << 10, 1)).is_ok());
        let err = m.account(0, (0, 0), (600 << 10, 1)).unwrap_err();
        assert!(err.contains("rw_exposure_bytes"), "{err}");
        // Rewriting the same file at the same size, shrinking it, removing it: fine.
        assert!(m.account(0, (600 << 10, 1), (600 << 10, 1)).is_ok());
        assert!(m.account(0, (600 << 10, 1), (0, 0)).is_ok());
        for _ in 0..16 {
            m.account(0, (0, 0), (0, 1)).unwrap();
        }
        assert!(m.account(0, (0, 0), (0, 1)).is_err(), "the entry cap holds");
        assert!(m.account(1, (0, 0), (0, 1)).is_err(), "no such exposure");
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
