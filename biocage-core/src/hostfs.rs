//! Host file operations on exposed folders. Whoever can write in an exposed folder (a
//! shared project folder, a folder under /tmp) may swap any entry for a link at any
//! moment, so nothing here goes by path: every step is relative to an open directory
//! descriptor and never follows a link (`openat2` with `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS` where the kernel has it, `O_NOFOLLOW` at each component
//! otherwise), and a file opened for reading is checked against what was listed (type,
//! device, inode).

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;

/// One entry of a host folder, as listed (never through a link).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listed {
    /// Path below the listed folder.
    pub rel: PathBuf,
    /// A folder (else a regular file; links and special files are not listed).
    pub dir: bool,
    /// Permission bits.
    pub mode: u32,
    /// Size in bytes (files).
    pub size: u64,
    /// Device and inode: a file opened later must be this one.
    pub dev: u64,
    /// See `dev`.
    pub ino: u64,
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Opens the folder `root` itself (as given: its own path is the caller's choice).
pub(crate) fn open_root(root: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens `rel` below the folder `dir` with `flags`, following no link on the way or
/// at the end, and never leaving `dir`.
pub(crate) fn open_beneath(
    dir: &OwnedFd,
    rel: &Path,
    flags: OFlags,
    mode: Mode,
) -> io::Result<OwnedFd> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    match rustix::fs::openat2(dir, rel, flags, mode, resolve) {
        Err(Errno::NOSYS) | Err(Errno::PERM) => {}
        other => return Ok(other?),
    }
    // No openat2 (or a seccomp profile that refuses it): one component at a time.
    let mut parts = rel.components().peekable();
    let mut here: Option<OwnedFd> = None;
    while let Some(part) = parts.next() {
        let at = here.as_ref().unwrap_or(dir);
        let name = part.as_os_str();
        if name.as_bytes().contains(&b'/') || matches!(name.as_bytes(), b".." | b".") {
            return Err(io::Error::other("not a plain relative path"));
        }
        here = Some(if parts.peek().is_some() {
            rustix::fs::openat(at, name, DIR_FLAGS, Mode::empty())?
        } else {
            rustix::fs::openat(at, name, flags, mode)?
        });
    }
    here.map_or_else(|| Ok(rustix::io::dup(dir)?), Ok)
}

fn listed(rel: PathBuf, st: &Stat) -> Option<Listed> {
    let kind = FileType::from_raw_mode(st.st_mode);
    let dir = kind == FileType::Directory;
    (dir || kind == FileType::RegularFile).then(|| Listed {
        rel,
        dir,
        mode: st.st_mode & 0o777,
        size: u64::try_from(st.st_size).unwrap_or(0),
        dev: st.st_dev,
        ino: st.st_ino,
    })
}

/// Lists every folder and regular file below `root`, depth first, each folder read
/// through a descriptor opened without following links; `visit` sees each entry as
/// it is found and may stop the walk with an error.
pub(crate) fn walk<E: From<io::Error>>(
    root: &Path,
    mut visit: impl FnMut(&Listed) -> std::result::Result<(), E>,
) -> std::result::Result<Vec<Listed>, E> {
    let root_fd = open_root(root)?;
    let mut out = Vec::new();
    let mut stack = vec![(PathBuf::new(), root_fd)];
    while let Some((rel, fd)) = stack.pop() {
        let mut dir = rustix::fs::Dir::read_from(&fd).map_err(io::Error::from)?;
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(io::Error::from)?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let name = std::ffi::OsStr::from_bytes(name);
            let st = match rustix::fs::statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                Err(Errno::NOENT) => continue, // gone meanwhile
                other => other.map_err(io::Error::from)?,
            };
            let Some(item) = listed(rel.join(name), &st) else {
                continue; // links and special files of the host are not copied
            };
            visit(&item)?;
            if item.dir {
                match rustix::fs::openat(&fd, name, DIR_FLAGS, Mode::empty()) {
                    Ok(child) => stack.push((item.rel.clone(), child)),
                    // Swapped for a link or a file since it was listed: not followed.
                    Err(Errno::LOOP | Errno::NOTDIR | Errno::NOENT) => continue,
                    Err(e) => return Err(io::Error::from(e).into()),
                }
            }
            out.push(item);
        }
    }
    Ok(out)
}

/// Opens the listed file `entry` below `root` for reading, never through a link, and
/// only if it is still the file that was listed (same device and inode).
pub(crate) fn open_listed(root: &Path, entry: &Listed) -> io::Result<fs::File> {
    let changed = || {
        io::Error::other(format!(
            "{} changed while it was being copied (replaced by another file or a link); nothing was read through it, try again",
            entry.rel.display()
        ))
    };
    let root_fd = open_root(root)?;
    let fd = match open_beneath(
        &root_fd,
        &entry.rel,
        OFlags::RDONLY | OFlags::NONBLOCK,
        Mode::empty(),
    ) {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ELOOP | libc::ENOTDIR | libc::EXDEV | libc::ENOENT)
            ) =>
        {
            return Err(changed())
        }
        other => other?,
    };
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
        || st.st_dev != entry.dev
        || st.st_ino != entry.ino
    {
        return Err(changed());
    }
    Ok(fs::File::from(fd))
}

/// The folder `rel` below `root`, each component opened without following a link;
/// missing ones are made (mode 0700) when `create`, and a file in the way is replaced
/// by a folder.
pub(crate) fn open_dir_below(root: &Path, rel: &Path, create: bool) -> io::Result<OwnedFd> {
    let mut dir = open_root(root)?;
    for part in rel.components() {
        let name = part.as_os_str();
        dir = match rustix::fs::openat(&dir, name, DIR_FLAGS, Mode::empty()) {
            Err(Errno::NOENT) if create => {
                rustix::fs::mkdirat(&dir, name, Mode::RWXU)?;
                rustix::fs::openat(&dir, name, DIR_FLAGS, Mode::empty())?
            }
            Err(Errno::NOTDIR | Errno::LOOP) if create => {
                // A file (or a link) the sandbox replaced by a folder.
                rustix::fs::unlinkat(&dir, name, AtFlags::empty())?;
                rustix::fs::mkdirat(&dir, name, Mode::RWXU)?;
                rustix::fs::openat(&dir, name, DIR_FLAGS, Mode::empty())?
            }
            other => other?,
        };
    }
    Ok(dir)
}

/// What is at `rel` below `root` now, never through a link: `Some((is_dir, size))`,
/// or None when nothing (or a link or special file) is there.
pub(crate) fn peek_below(root: &Path, rel: &Path) -> io::Result<Option<(bool, u64)>> {
    let (parent, name) = split(rel)?;
    let dir = match open_dir_below(root, parent, false) {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
            ) =>
        {
            return Ok(None)
        }
        other => other?,
    };
    match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
        Ok(st) => Ok(listed(PathBuf::new(), &st).map(|l| (l.dir, l.size))),
    }
}

/// A new file that replaces `rel` below `root` only when it is complete: written as a
/// hidden temporary file in the same folder, then renamed over the old one
/// ([`Replacement::commit`]). Dropped uncommitted, it is removed and the old file is
/// untouched.
#[derive(Debug)]
pub(crate) struct Replacement {
    dir: OwnedFd,
    temp: std::ffi::OsString,
    name: std::ffi::OsString,
    file: Option<fs::File>,
    committed: bool,
}

impl Replacement {
    /// Starts replacing `rel` below `root` (folders on the way are made, never through
    /// a link). The new file gets the mode and owner of the one it replaces (less
    /// setuid, setgid, sticky), or, when new, the owner bits `sandbox_mode` has (at
    /// least read and write) and this process's owner.
    pub(crate) fn begin(root: &Path, rel: &Path, sandbox_mode: u32) -> io::Result<Self> {
        let (parent, name) = split(rel)?;
        let dir = open_dir_below(root, parent, true)?;
        let old = match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => Some(st),
            _ => None,
        };
        let mode = old.map_or((sandbox_mode & 0o700) | 0o600, |st| st.st_mode & 0o777);
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut attempt = 0u32;
        let (temp, fd) = loop {
            let temp =
                std::ffi::OsString::from(format!(".biocage-{}.tmp", uuid::Uuid::new_v4().simple()));
            match rustix::fs::openat(&dir, temp.as_os_str(), flags, Mode::from_raw_mode(mode)) {
                Err(Errno::EXIST) if attempt < 3 => attempt += 1,
                other => break (temp, other?),
            }
        };
        let mut this = Replacement {
            dir,
            temp,
            name: name.to_os_string(),
            file: None,
            committed: false,
        };
        // The umask may have taken bits off; the owner is the old file's where we can.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
        if let Some(st) = old {
            let owner = (
                rustix::fs::Uid::from_raw(st.st_uid),
                rustix::fs::Gid::from_raw(st.st_gid),
            );
            if let Err(e) = rustix::fs::fchown(&fd, Some(owner.0), Some(owner.1)) {
                tracing::debug!("keeping the owner of {}: {e}", rel.display());
            }
        }
        this.file = Some(fs::File::from(fd));
        Ok(this)
    }

    /// The new file, to write.
    pub(crate) fn file(&self) -> io::Result<&fs::File> {
        self.file
            .as_ref()
            .ok_or_else(|| io::Error::other("no file"))
    }

    /// Puts the new file in place of the old one, in one rename (a folder there is
    /// removed first, if empty).
    pub(crate) fn commit(mut self) -> io::Result<()> {
        if let Some(f) = self.file.take() {
            // Errors the kernel kept for the close (a full disk on some filesystems).
            f.sync_data()?;
        }
        let (temp, name) = (self.temp.as_os_str(), self.name.as_os_str());
        match rustix::fs::renameat(&self.dir, temp, &self.dir, name) {
            Err(Errno::ISDIR | Errno::NOTEMPTY | Errno::EXIST) => {
                rustix::fs::unlinkat(&self.dir, name, AtFlags::REMOVEDIR)?;
                rustix::fs::renameat(&self.dir, temp, &self.dir, name)?;
            }
            other => other?,
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for Replacement {
    fn drop(&mut self) {
        if !self.committed {
            let _ = rustix::fs::unlinkat(&self.dir, self.temp.as_os_str(), AtFlags::empty());
        }
    }
}

/// The parent folder and last name of a relative path.
pub(crate) fn split(rel: &Path) -> io::Result<(&Path, &std::ffi::OsStr)> {
    match (rel.parent(), rel.file_name()) {
        (Some(parent), Some(name)) => Ok((parent, name)),
        _ => Err(io::Error::other("empty path")),
    }
}

/// Removes the file or (empty) folder `rel` below `root`, never through a link.
pub(crate) fn remove_below(root: &Path, rel: &Path) -> io::Result<()> {
    let (parent, name) = split(rel)?;
    let dir = match open_dir_below(root, parent, false) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        other => other?,
    };
    match rustix::fs::unlinkat(&dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(Errno::ISDIR) => match rustix::fs::unlinkat(&dir, name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        },
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::{FileExt, MetadataExt};

    #[test]
    fn a_replacement_is_all_or_nothing() {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("f"), "old").unwrap();
        fs::set_permissions(
            root.path().join("f"),
            std::os::unix::fs::PermissionsExt::from_mode(0o640),
        )
        .unwrap();
        // Abandoned midway: the old file is whole, no temporary file is left.
        {
            let r = Replacement::begin(root.path(), Path::new("f"), 0o777).unwrap();
            r.file().unwrap().write_all_at(b"half", 0).unwrap();
        }
        assert_eq!(fs::read_to_string(root.path().join("f")).unwrap(), "old");
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 1);
        let r = Replacement::begin(root.path(), Path::new("f"), 0o777).unwrap();
        r.file().unwrap().write_all_at(b"new", 0).unwrap();
        r.commit().unwrap();
        assert_eq!(fs::read_to_string(root.path().join("f")).unwrap(), "new");
        let meta = fs::metadata(root.path().join("f")).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o640, "the old file's mode");
        let r = Replacement::begin(root.path(), Path::new("d/e/new"), 0o4777).unwrap();
        r.commit().unwrap();
        let meta = fs::metadata(root.path().join("d/e/new")).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o700, "owner bits only");
        assert_eq!(
            peek_below(root.path(), Path::new("f")).unwrap(),
            Some((false, 3))
        );
        assert_eq!(peek_below(root.path(), Path::new("nope/x")).unwrap(), None);
    }

    #[test]
    fn a_listed_file_swapped_for_a_link_is_not_read() {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join("a"), "mine").unwrap();
        fs::create_dir(root.path().join("d")).unwrap();
        fs::write(root.path().join("d/b"), "b").unwrap();
        let entries = walk::<io::Error>(root.path(), |_| Ok(())).unwrap();
        assert_eq!(entries.len(), 3);
        let a = entries.iter().find(|e| e.rel == Path::new("a")).unwrap();
        let mut text = String::new();
        open_listed(root.path(), a)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "mine");
        // Swapped for a link: refused. Swapped for another file: refused too.
        fs::rename(root.path().join("a"), root.path().join("a.old")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", root.path().join("a")).unwrap();
        assert!(open_listed(root.path(), a).is_err());
        fs::remove_file(root.path().join("a")).unwrap();
        fs::write(root.path().join("a"), "other").unwrap();
        assert!(open_listed(root.path(), a).is_err());
        // A listed folder swapped for a link: nothing below it is reached.
        let b = entries.iter().find(|e| e.rel == Path::new("d/b")).unwrap();
        fs::remove_dir_all(root.path().join("d")).unwrap();
        std::os::unix::fs::symlink("/etc", root.path().join("d")).unwrap();
        assert!(open_listed(root.path(), b).is_err());
        let again = walk::<io::Error>(root.path(), |_| Ok(())).unwrap();
        assert!(again.iter().all(|e| !e.rel.starts_with("d")), "{again:?}");
    }
}
