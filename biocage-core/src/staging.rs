//! Host-side staging of exposures, so that ownership "just works" whatever uid the
//! sandbox user maps to on the host (rootful Docker: 1000; rootless Podman: a subuid).
//!
//! - A read-only exposure that every user can already read (and reach) is bound as it is.
//!   Otherwise (a private 0600 file, a 0700 folder) a snapshot copy is bound instead,
//!   made readable by the sandbox user.
//! - A read-write folder is bound through a staged copy that the sandbox user can write;
//!   after every run and at close, what the sandbox changed there is mirrored back into
//!   the host folder by this (host) process, so the results belong to the host user.
//!   Symbolic links and special files made by sandbox code are never followed nor copied.
//!
//! The staging folder lives in the host temp dir and is removed with the session.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::{Exposure, ExposureMode};
use crate::error::{Error, Result};
use crate::spec::BindMount;

/// Who must be able to use staged files: the sandbox user's uid and gid on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostOwner {
    /// Host uid of the sandbox user.
    pub uid: u32,
    /// Host gid of the sandbox user.
    pub gid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime_ns: i128,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Self {
        Stamp {
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }
}

/// A read-write folder mirrored between its staged copy and the host.
#[derive(Debug)]
struct Mirror {
    host: PathBuf,
    staged: PathBuf,
    /// Staged files (relative path) as last mirrored.
    files: BTreeMap<PathBuf, Stamp>,
    /// Staged folders (relative path) as last mirrored.
    dirs: Vec<PathBuf>,
}

/// What was mirrored back by [`Staging::sync_back`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Files copied to the host.
    pub copied: usize,
    /// Files and folders removed from the host (removed in the sandbox).
    pub removed: usize,
    /// Entries not mirrored (symbolic links, special files), as relative paths.
    pub skipped: Vec<PathBuf>,
    /// Entries that could not be mirrored, with the reason (tried again next time).
    pub failed: Vec<(PathBuf, String)>,
}

/// The staged exposures of one session.
#[derive(Debug)]
pub struct Staging {
    dir: Option<tempfile::TempDir>,
    binds: Vec<BindMount>,
    mirrors: Vec<Mirror>,
    owner: Option<HostOwner>,
}

fn io_err(action: String) -> impl FnOnce(io::Error) -> Error {
    move |e| Error::io(action, e)
}

/// True when any user can reach and read `path` (and everything below it).
fn readable_by_anyone(path: &Path) -> bool {
    let reachable = path
        .ancestors()
        .skip(1)
        .all(|a| fs::metadata(a).is_ok_and(|m| m.mode() & 0o001 != 0));
    reachable && tree_readable(path)
}

fn tree_readable(path: &Path) -> bool {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return false;
    };
    if meta.is_dir() {
        meta.mode() & 0o005 == 0o005
            && fs::read_dir(path)
                .is_ok_and(|entries| entries.flatten().all(|e| tree_readable(&e.path())))
    } else {
        meta.file_type().is_symlink() || meta.mode() & 0o004 != 0
    }
}

impl Staging {
    /// Stages `exposures` for a sandbox user that is `owner` on the host (chown needs
    /// root; without it, staged files are made accessible to every user instead, inside
    /// a folder whose unguessable name only the engine is told).
    pub fn prepare(exposures: &[Exposure], owner: Option<HostOwner>) -> Result<Self> {
        let mut staging = Staging {
            dir: None,
            binds: Vec::new(),
            mirrors: Vec::new(),
            owner,
        };
        for (i, e) in exposures.iter().enumerate() {
            let host = fs::canonicalize(&e.host)
                .map_err(io_err(format!("resolving {}", e.host.display())))?;
            let read_only = e.mode == ExposureMode::ReadOnly;
            if read_only && readable_by_anyone(&host) {
                staging.binds.push(BindMount {
                    host,
                    target: e.container.clone(),
                    read_only,
                });
                continue;
            }
            let staged = staging.root()?.join(format!("x{i}"));
            staging.copy_in(&host, &staged, !read_only)?;
            if !read_only {
                let (files, dirs) = scan(&staged)?;
                staging.mirrors.push(Mirror {
                    host: host.clone(),
                    staged: staged.clone(),
                    files,
                    dirs,
                });
            }
            staging.binds.push(BindMount {
                host: staged,
                target: e.container.clone(),
                read_only,
            });
        }
        Ok(staging)
    }

    /// Whether any read-write folder is mirrored (else [`Staging::sync_back`] has nothing to do).
    pub fn mirrors_anything(&self) -> bool {
        !self.mirrors.is_empty()
    }

    /// What the container must bind.
    pub fn binds(&self) -> &[BindMount] {
        &self.binds
    }

    /// Whether the sandbox should create files that every user can remove (staged
    /// copies could not be given to the sandbox user).
    pub fn needs_open_umask(&self) -> bool {
        !self.mirrors.is_empty() && !self.chowned()
    }

    fn chowned(&self) -> bool {
        self.owner.is_some() && is_root()
    }

    fn root(&mut self) -> Result<PathBuf> {
        if self.dir.is_none() {
            let dir = tempfile::Builder::new()
                .prefix(&format!("biocage-{}-", std::process::id()))
                .tempdir()
                .map_err(io_err("creating a staging folder".into()))?;
            // Reachable, not listable: the engine (maybe another user) binds from inside.
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o711))
                .map_err(io_err("protecting the staging folder".into()))?;
            self.dir = Some(dir);
        }
        // Canonical: open_below compares it with the paths the kernel reports.
        let path = self
            .dir
            .as_ref()
            .map(|d| d.path().to_path_buf())
            .unwrap_or_default();
        fs::canonicalize(&path).map_err(io_err("resolving the staging folder".into()))
    }

    fn give(&self, path: &Path, dir: bool, writable: bool) -> Result<()> {
        let mode = match (self.chowned(), dir, writable) {
            (true, true, _) => 0o700,
            (true, false, _) => 0o600,
            (false, true, true) => 0o777,
            (false, true, false) => 0o755,
            (false, false, true) => 0o666,
            (false, false, false) => 0o644,
        };
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(io_err(format!("setting permissions of {}", path.display())))?;
        if let (true, Some(o)) = (self.chowned(), self.owner) {
            std::os::unix::fs::lchown(path, Some(o.uid), Some(o.gid)).map_err(io_err(format!(
                "giving {} to the sandbox user",
                path.display()
            )))?;
        }
        Ok(())
    }

    fn copy_in(&self, from: &Path, to: &Path, writable: bool) -> Result<()> {
        let meta =
            fs::symlink_metadata(from).map_err(io_err(format!("reading {}", from.display())))?;
        if meta.is_dir() {
            fs::create_dir(to).map_err(io_err(format!("staging {}", from.display())))?;
            for entry in
                fs::read_dir(from).map_err(io_err(format!("listing {}", from.display())))?
            {
                let entry = entry.map_err(io_err(format!("listing {}", from.display())))?;
                self.copy_in(&entry.path(), &to.join(entry.file_name()), writable)?;
            }
            self.give(to, true, writable)
        } else if meta.is_file() {
            fs::copy(from, to).map_err(io_err(format!("staging {}", from.display())))?;
            self.give(to, false, writable)
        } else {
            tracing::debug!("not staging {} (neither file nor folder)", from.display());
            Ok(())
        }
    }

    /// Mirrors what sandbox code changed in read-write exposures back to the host:
    /// new and changed files copied (permission bits only: no setuid, no setgid),
    /// removed ones removed. Never follows a link, never blocks on a FIFO, never reads
    /// past the size it saw; an entry that fails is reported and tried again next time.
    pub fn sync_back(&mut self) -> Result<SyncReport> {
        let mut report = SyncReport::default();
        for m in &mut self.mirrors {
            let (files, dirs) = scan_reporting(&m.staged, &mut report.skipped)?;
            for d in &dirs {
                let target = m.host.join(d);
                let made = match fs::symlink_metadata(&target) {
                    Ok(meta) if meta.is_dir() => Ok(()),
                    Ok(_) => remove_any(&target).and_then(|()| fs::create_dir_all(&target)),
                    Err(_) => fs::create_dir_all(&target),
                };
                if let Err(e) = made {
                    report.failed.push((d.clone(), e.to_string()));
                }
            }
            let mut mirrored = BTreeMap::new();
            for (rel, stamp) in &files {
                if m.files.get(rel) == Some(stamp) {
                    mirrored.insert(rel.clone(), *stamp);
                    continue;
                }
                match copy_back(&m.staged, rel, stamp, &m.host.join(rel)) {
                    Ok(()) => {
                        report.copied += 1;
                        mirrored.insert(rel.clone(), *stamp);
                    }
                    Err(e) => report.failed.push((rel.clone(), e.to_string())),
                }
            }
            for rel in m.files.keys().filter(|k| !files.contains_key(*k)) {
                let target = m.host.join(rel);
                if fs::symlink_metadata(&target).is_ok() && fs::remove_file(&target).is_ok() {
                    report.removed += 1;
                }
            }
            // Deepest first, so that emptied parents can go too.
            for rel in m.dirs.iter().rev().filter(|d| !dirs.contains(d)) {
                if fs::remove_dir(m.host.join(rel)).is_ok() {
                    report.removed += 1;
                }
            }
            m.files = mirrored;
            m.dirs = dirs;
        }
        Ok(report)
    }
}

/// Opens `root/rel` without following a link anywhere below `root`: the last component
/// with O_NOFOLLOW, and the path the kernel really opened must be `root/rel` (a folder
/// swapped for a link on the way shows up elsewhere). Non-blocking, so that a FIFO
/// cannot stall the host; only a regular file (or a folder, with `dir`) is accepted.
fn open_below(root: &Path, rel: &Path, dir: bool) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let path = root.join(rel);
    let mut flags = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
    if dir {
        flags |= libc::O_DIRECTORY;
    }
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(&path)?;
    let real = fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    if real != path {
        return Err(io::Error::other(format!(
            "{} was moved while it was read",
            path.display()
        )));
    }
    let meta = file.metadata()?;
    if (dir && !meta.is_dir()) || (!dir && !meta.is_file()) {
        return Err(io::Error::other("not a regular file or folder"));
    }
    Ok(file)
}

/// Copies one staged file to `target` on the host, at most the size it was seen with,
/// keeping only its permission bits.
fn copy_back(root: &Path, rel: &Path, stamp: &Stamp, target: &Path) -> io::Result<()> {
    use std::io::Read;
    let src = open_below(root, rel, false)?;
    let mode = src.metadata()?.mode() & 0o777;
    if fs::symlink_metadata(target).is_ok_and(|t| !t.is_file()) {
        remove_any(target)?;
    }
    let mut dst = fs::File::create(target)?;
    io::copy(&mut src.take(stamp.len), &mut dst)?;
    fs::set_permissions(target, fs::Permissions::from_mode(mode))
}

fn is_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

type Scan = (BTreeMap<PathBuf, Stamp>, Vec<PathBuf>);

fn scan(root: &Path) -> Result<Scan> {
    scan_reporting(root, &mut Vec::new())
}

/// Regular files (with stamps) and folders below `root`, as relative paths, folders in
/// pre-order; symbolic links and special files are listed in `skipped`, not followed.
fn scan_reporting(root: &Path, skipped: &mut Vec<PathBuf>) -> Result<Scan> {
    use std::os::unix::io::AsRawFd;
    let mut files = BTreeMap::new();
    let mut dirs = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = match open_below(root, &rel, true) {
            Ok(d) => d,
            Err(_) if !rel.as_os_str().is_empty() => {
                skipped.push(rel);
                continue;
            }
            Err(e) => return Err(Error::io(format!("listing {}", root.display()), e)),
        };
        // Listed through the open descriptor: what was verified is what is read.
        let listing = format!("/proc/self/fd/{}", dir.as_raw_fd());
        let entries = fs::read_dir(&listing)
            .map_err(io_err(format!("listing {}", root.join(&rel).display())))?;
        for entry in entries.flatten() {
            let child = rel.join(entry.file_name());
            match entry.file_type() {
                Ok(t) if t.is_dir() => {
                    dirs.push(child.clone());
                    stack.push(child);
                }
                Ok(t) if t.is_file() => match entry.metadata() {
                    Ok(m) => {
                        files.insert(child, Stamp::of(&m));
                    }
                    Err(_) => skipped.push(child),
                },
                _ => skipped.push(child),
            }
        }
    }
    dirs.sort();
    Ok((files, dirs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposure(host: &Path, target: &str, mode: ExposureMode) -> Exposure {
        Exposure {
            host: host.to_path_buf(),
            container: target.to_string(),
            mode,
        }
    }

    #[test]
    fn private_files_are_staged_and_public_ones_bound() {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("secret.txt");
        fs::write(&private, "s").unwrap();
        fs::set_permissions(&private, fs::Permissions::from_mode(0o600)).unwrap();
        let staging = Staging::prepare(
            &[exposure(&private, "/data/s.txt", ExposureMode::ReadOnly)],
            None,
        )
        .unwrap();
        let bind = &staging.binds()[0];
        assert_ne!(bind.host, private, "a private file is copied");
        assert_eq!(fs::read_to_string(&bind.host).unwrap(), "s");
        assert_eq!(fs::metadata(&bind.host).unwrap().mode() & 0o777, 0o644);

        let public = Path::new("/etc/hostname");
        if readable_by_anyone(public) {
            let staging =
                Staging::prepare(&[exposure(public, "/h", ExposureMode::ReadOnly)], None).unwrap();
            assert_eq!(staging.binds()[0].host, public);
        }
    }

    #[test]
    fn as_root_staged_copies_belong_to_the_sandbox_user() {
        if !is_root() {
            eprintln!("SKIPPED: chown of staged copies needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("p");
        fs::create_dir(&private).unwrap();
        fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(private.join("f"), "x").unwrap();
        let owner = HostOwner {
            uid: 200999,
            gid: 200999,
        };
        let staging = Staging::prepare(
            &[exposure(&private, "/in", ExposureMode::ReadWrite)],
            Some(owner),
        )
        .unwrap();
        let staged = &staging.binds()[0].host;
        for p in [staged.clone(), staged.join("f")] {
            let m = fs::metadata(&p).unwrap();
            assert_eq!((m.uid(), m.gid()), (200999, 200999), "{}", p.display());
        }
        assert_eq!(
            fs::metadata(staged.join("f")).unwrap().mode() & 0o777,
            0o600
        );
        assert!(!staging.needs_open_umask());
    }

    #[test]
    fn hostile_entries_are_not_carried_back() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("out");
        fs::create_dir(&host).unwrap();
        fs::write(host.join("res"), "was a file").unwrap();
        let mut staging =
            Staging::prepare(&[exposure(&host, "/out", ExposureMode::ReadWrite)], None).unwrap();
        let staged = staging.binds()[0].host.clone();
        // A setuid file, a file turned into a folder, a FIFO, a folder that is a link.
        fs::write(staged.join("tool"), "#!/bin/sh").unwrap();
        fs::set_permissions(staged.join("tool"), fs::Permissions::from_mode(0o6755)).unwrap();
        fs::remove_file(staged.join("res")).unwrap();
        fs::create_dir(staged.join("res")).unwrap();
        fs::write(staged.join("res/a.csv"), "a").unwrap();
        let fifo = std::ffi::CString::new(staged.join("pipe").to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        std::os::unix::fs::symlink("/etc", staged.join("etc")).unwrap();
        let report = staging.sync_back().unwrap();
        assert!(report.failed.is_empty(), "{report:?}");
        assert_eq!(
            fs::metadata(host.join("tool")).unwrap().mode() & 0o7777,
            0o755,
            "no setuid on the host"
        );
        assert_eq!(fs::read_to_string(host.join("res/a.csv")).unwrap(), "a");
        assert!(fs::symlink_metadata(host.join("pipe")).is_err());
        assert!(fs::symlink_metadata(host.join("etc")).is_err());
        assert!(!host.join("etc/passwd").exists());
    }

    #[test]
    fn read_write_changes_are_mirrored_back_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("out");
        fs::create_dir(&host).unwrap();
        fs::write(host.join("keep.txt"), "k").unwrap();
        fs::write(host.join("gone.txt"), "g").unwrap();
        let mut staging =
            Staging::prepare(&[exposure(&host, "/out", ExposureMode::ReadWrite)], None).unwrap();
        let staged = staging.binds()[0].host.clone();
        // What sandbox code would do:
        fs::create_dir(staged.join("sub")).unwrap();
        fs::write(staged.join("sub/new.txt"), "n").unwrap();
        fs::remove_file(staged.join("gone.txt")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", staged.join("link")).unwrap();
        let report = staging.sync_back().unwrap();
        assert_eq!(fs::read_to_string(host.join("sub/new.txt")).unwrap(), "n");
        assert!(!host.join("gone.txt").exists());
        assert!(host.join("keep.txt").exists());
        assert!(
            fs::symlink_metadata(host.join("link")).is_err(),
            "links are not mirrored"
        );
        assert_eq!(report.skipped, vec![PathBuf::from("link")]);
        assert_eq!(report.copied, 1);
        let again = staging.sync_back().unwrap();
        assert_eq!(again.copied, 0, "unchanged files are not copied again");
        let root = staging.dir.as_ref().unwrap().path().to_path_buf();
        drop(staging);
        assert!(!root.exists(), "the staging folder goes with the session");
    }
}
