//! Host-side staging of read-only exposures, so that the sandbox user can read them
//! whatever uid it maps to on the host, and no one else can.
//!
//! - A read-only exposure that every user can already read (and reach) is bound as it is.
//!   Otherwise (a private 0600 file, a 0700 folder) a snapshot copy is bound instead,
//!   readable by the sandbox's host uid only: owned by it when this process is root,
//!   or granted to it by an access-control entry when it is not. That uid is never a
//!   host account (see [`crate::uids`]).
//! - Read-write exposures are not staged here: they live in a size-capped tmpfs inside
//!   the sandbox and are mirrored back through the agent (see `mirror.rs`), so
//!   nothing a sandbox writes is ever on a host filesystem.
//! - Sandboxes without network get generated `/etc/hosts` and `/etc/resolv.conf`:
//!   nothing of the host's names or DNS servers.
//!
//! Staging folders live under [`runtime_dir`]`/staging`, are removed with the session,
//! and those of processes that died are removed by [`remove_stale_staging`].

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::{Exposure, ExposureMode};
use crate::error::{Error, Result};
use crate::hostfs;

/// A host path bound into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Host path (absolute).
    pub host: PathBuf,
    /// Container path.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Who must be able to use staged files: the sandbox user's uid and gid on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostOwner {
    /// Host uid of the sandbox user.
    pub uid: u32,
    /// Host gid of the sandbox user.
    pub gid: u32,
}

/// The staged exposures of one session.
#[derive(Debug)]
pub struct Staging {
    dir: Option<tempfile::TempDir>,
    binds: Vec<BindMount>,
    owner: Option<HostOwner>,
}

fn io_err(action: String) -> impl FnOnce(io::Error) -> Error {
    move |e| Error::io(action, e)
}

/// BioCage's own folder for this host user: `/run/biocage` as root, else under
/// `XDG_RUNTIME_DIR`, else in the temp dir; never listable by other users.
pub fn runtime_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/run/biocage");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if Path::new(&d).is_absolute() => Path::new(&d).join("biocage"),
        // SAFETY: geteuid has no preconditions.
        _ => std::env::temp_dir().join(format!("biocage-{}", unsafe { libc::geteuid() })),
    }
}

fn staging_base() -> PathBuf {
    runtime_dir().join("staging")
}

/// Removes the staging folders of processes that are gone (a host process killed before
/// it could clean up); returns how many. Folders are named `biocage-PID-...`.
pub fn remove_stale_staging() -> usize {
    let Ok(entries) = fs::read_dir(staging_base()) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let pid = name
            .strip_prefix("biocage-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !Path::new(&format!("/proc/{pid}")).exists() && remove_any(&entry.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
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

/// `/etc/hosts` of a sandbox without network: loopback names only.
const HOSTS: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";
/// `/etc/resolv.conf` of a sandbox without network: no name server.
const RESOLV: &str = "# no network in this sandbox\n";

impl Staging {
    /// Stages the read-only `exposures` (read-write ones are skipped: they are mirrored
    /// through the agent) for a sandbox user that is `owner` on the host, and, without
    /// `network`, the generated name-service files.
    pub fn prepare(
        exposures: &[Exposure],
        owner: Option<HostOwner>,
        network: bool,
    ) -> Result<Self> {
        let mut staging = Staging {
            dir: None,
            binds: Vec::new(),
            owner,
        };
        for (i, e) in exposures.iter().enumerate() {
            if e.mode == ExposureMode::ReadWrite {
                continue;
            }
            let host = fs::canonicalize(&e.host)
                .map_err(io_err(format!("resolving {}", e.host.display())))?;
            if readable_by_anyone(&host) {
                staging.binds.push(BindMount {
                    host,
                    target: e.container.clone(),
                    read_only: true,
                });
                continue;
            }
            let staged = staging.root()?.join(format!("x{i}"));
            staging.copy_in(&host, &staged)?;
            staging.binds.push(BindMount {
                host: staged,
                target: e.container.clone(),
                read_only: true,
            });
        }
        if !network {
            for (name, text, target) in [
                ("hosts", HOSTS, "/etc/hosts"),
                ("resolv.conf", RESOLV, "/etc/resolv.conf"),
            ] {
                let path = staging.root()?.join(name);
                fs::write(&path, text).map_err(io_err(format!("writing {}", path.display())))?;
                fs::set_permissions(&path, fs::Permissions::from_mode(0o644))
                    .map_err(io_err(format!("protecting {}", path.display())))?;
                staging.binds.push(BindMount {
                    host: path,
                    target: target.into(),
                    read_only: true,
                });
            }
        }
        Ok(staging)
    }

    /// What the container must bind.
    pub fn binds(&self) -> &[BindMount] {
        &self.binds
    }

    fn root(&mut self) -> Result<PathBuf> {
        if self.dir.is_none() {
            let base = staging_base();
            crate::uids::create_private_dir(&base)?;
            let dir = tempfile::Builder::new()
                .prefix(&format!("biocage-{}-", std::process::id()))
                .tempdir_in(&base)
                .map_err(io_err("creating a staging folder".into()))?;
            // Reachable by the engine (maybe another user), never listable; as non-root,
            // reachable by the sandbox's host uid alone (an access-control entry).
            let mode = if is_root() { 0o711 } else { 0o700 };
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(mode))
                .map_err(io_err("protecting the staging folder".into()))?;
            if !is_root() {
                self.grant(dir.path(), 0o1)?;
            }
            self.dir = Some(dir);
        }
        let path = self
            .dir
            .as_ref()
            .map(|d| d.path().to_path_buf())
            .unwrap_or_default();
        fs::canonicalize(&path).map_err(io_err("resolving the staging folder".into()))
    }

    /// Gives `path` to the sandbox user alone: owned by it (as root), or owned by this
    /// user with an access-control entry for it (`perm`: 4 read, 1 traverse).
    fn grant(&self, path: &Path, perm: u16) -> Result<()> {
        let Some(owner) = self.owner else {
            return Err(Error::io(
                format!("staging {}", path.display()),
                io::Error::other("the sandbox user has no numeric host uid to give private copies to; expose a file every user can read, or set a numeric user"),
            ));
        };
        if is_root() {
            return std::os::unix::fs::lchown(path, Some(owner.uid), Some(owner.gid)).map_err(
                io_err(format!("giving {} to the sandbox user", path.display())),
            );
        }
        set_user_acl(path, owner.uid, perm).map_err(io_err(format!(
            "granting the sandbox user access to {} (the file system must support POSIX ACLs when BioCage does not run as root)",
            path.display()
        )))
    }

    /// Copies the file or folder `from` to `to` for the sandbox user alone. Nothing is
    /// read through a link, and each file read is the one that was listed (see
    /// [`crate::hostfs`]): a link swapped in meanwhile is not followed.
    fn copy_in(&self, from: &Path, to: &Path) -> Result<()> {
        let meta =
            fs::symlink_metadata(from).map_err(io_err(format!("reading {}", from.display())))?;
        if meta.is_file() {
            let (parent, name) = match (from.parent(), from.file_name()) {
                (Some(p), Some(n)) => (p, n),
                _ => {
                    return Err(Error::io(
                        format!("staging {}", from.display()),
                        io::Error::other("no file name"),
                    ))
                }
            };
            let entry = hostfs::Listed {
                rel: PathBuf::from(name),
                dir: false,
                mode: meta.mode() & 0o777,
                size: meta.len(),
                dev: meta.dev(),
                ino: meta.ino(),
            };
            return self.copy_file(parent, &entry, to);
        }
        if !meta.is_dir() {
            tracing::debug!("not staging {} (neither file nor folder)", from.display());
            return Ok(());
        }
        self.make_dir(to)?;
        let entries = hostfs::walk::<io::Error>(from, |_| Ok(()))
            .map_err(io_err(format!("listing {}", from.display())))?;
        for entry in &entries {
            let dest = to.join(&entry.rel);
            if entry.dir {
                self.make_dir(&dest)?;
            } else {
                self.copy_file(from, entry, &dest)?;
            }
        }
        Ok(())
    }

    fn make_dir(&self, to: &Path) -> Result<()> {
        fs::create_dir(to).map_err(io_err(format!("staging {}", to.display())))?;
        fs::set_permissions(to, fs::Permissions::from_mode(0o700))
            .map_err(io_err(format!("protecting {}", to.display())))?;
        self.grant(to, 0o5)
    }

    fn copy_file(&self, root: &Path, entry: &hostfs::Listed, to: &Path) -> Result<()> {
        let from = root.join(&entry.rel);
        let mut src = hostfs::open_listed(root, entry)
            .map_err(io_err(format!("staging {}", from.display())))?;
        let mut dest = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(to)
            .map_err(io_err(format!("staging {}", from.display())))?;
        io::copy(&mut src, &mut dest).map_err(io_err(format!("staging {}", from.display())))?;
        self.grant(to, 0o4)
    }
}

/// Sets the access ACL of `path` to: owner as its mode says, `uid` with `perm`, nobody
/// else (group and other none). The xattr layout is the kernel's posix_acl_xattr.
fn set_user_acl(path: &Path, uid: u32, perm: u16) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let owner_perm = u16::try_from((fs::symlink_metadata(path)?.mode() >> 6) & 0o7).unwrap_or(0);
    const UNDEFINED: u32 = u32::MAX;
    // (tag, perm, id), sorted by tag: USER_OBJ, USER, GROUP_OBJ, MASK, OTHER.
    let entries = [
        (0x01u16, owner_perm, UNDEFINED),
        (0x02, perm, uid),
        (0x04, 0, UNDEFINED),
        (0x10, perm, UNDEFINED),
        (0x20, 0, UNDEFINED),
    ];
    let mut blob = 2u32.to_le_bytes().to_vec();
    for (tag, p, id) in entries {
        blob.extend_from_slice(&tag.to_le_bytes());
        blob.extend_from_slice(&p.to_le_bytes());
        blob.extend_from_slice(&id.to_le_bytes());
    }
    let cpath = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: both pointers are to live, NUL-terminated or length-given buffers.
    let rc = unsafe {
        libc::lsetxattr(
            cpath.as_ptr(),
            c"system.posix_acl_access".as_ptr(),
            blob.as_ptr().cast(),
            blob.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub(crate) fn is_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Removes a file or a whole tree (staged copies of host folders: as deep as the host's own).
pub(crate) fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
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

    const OWNER: HostOwner = HostOwner {
        uid: 3_099_999,
        gid: 3_099_999,
    };

    #[test]
    fn private_files_are_staged_for_the_sandbox_user_alone() {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("secret.txt");
        fs::write(&private, "s").unwrap();
        fs::set_permissions(&private, fs::Permissions::from_mode(0o600)).unwrap();
        let staging = Staging::prepare(
            &[exposure(&private, "/data/s.txt", ExposureMode::ReadOnly)],
            Some(OWNER),
            true,
        )
        .unwrap();
        let bind = &staging.binds()[0];
        assert_ne!(bind.host, private, "a private file is copied");
        assert_eq!(fs::read_to_string(&bind.host).unwrap(), "s");
        let meta = fs::metadata(&bind.host).unwrap();
        assert_eq!(meta.mode() & 0o077, 0, "no group or other access");
        if is_root() {
            assert_eq!((meta.uid(), meta.gid()), (OWNER.uid, OWNER.gid));
        }
        let root = bind.host.parent().unwrap().to_path_buf();
        assert!(root.starts_with(staging_base()));
        assert_eq!(
            fs::metadata(&root).unwrap().mode() & 0o077,
            if is_root() { 0o011 } else { 0 }
        );
        drop(staging);
        assert!(!root.exists(), "the staging folder goes with the session");

        let public = Path::new("/etc/hostname");
        if readable_by_anyone(public) {
            let staging = Staging::prepare(
                &[exposure(public, "/h", ExposureMode::ReadOnly)],
                None,
                true,
            )
            .unwrap();
            assert_eq!(staging.binds()[0].host, public);
        }
    }

    #[test]
    fn acl_grants_one_uid_only() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        fs::write(&f, "x").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
        set_user_acl(&f, OWNER.uid, 4).unwrap();
        let out = std::process::Command::new("getfacl")
            .arg("-n")
            .arg(&f)
            .output();
        if let Ok(out) = out {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains(&format!("user:{}:r--", OWNER.uid)), "{text}");
            assert!(text.contains("other::---"), "{text}");
        }
        assert_eq!(fs::metadata(&f).unwrap().mode() & 0o007, 0);
    }

    #[test]
    fn without_network_name_service_files_are_generated() {
        let staging = Staging::prepare(&[], None, false).unwrap();
        let targets: Vec<&str> = staging.binds().iter().map(|b| b.target.as_str()).collect();
        assert_eq!(targets, ["/etc/hosts", "/etc/resolv.conf"]);
        let hosts = fs::read_to_string(&staging.binds()[0].host).unwrap();
        assert!(hosts.contains("localhost") && !hosts.contains(&crate::spec::host_name()));
        assert!(Staging::prepare(&[], None, true)
            .unwrap()
            .binds()
            .is_empty());
    }

    #[test]
    fn stale_staging_of_dead_processes_is_removed() {
        let base = staging_base();
        crate::uids::create_private_dir(&base).unwrap();
        // A pid that cannot be alive: above the kernel's pid_max limit.
        let stale = base.join("biocage-4194305-test");
        fs::create_dir_all(stale.join("deep/er")).unwrap();
        let mine = tempfile::Builder::new()
            .prefix(&format!("biocage-{}-", std::process::id()))
            .tempdir_in(&base)
            .unwrap();
        assert!(remove_stale_staging() >= 1);
        assert!(!stale.exists());
        assert!(mine.path().exists(), "a live process keeps its folder");
    }
}
