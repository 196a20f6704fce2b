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
