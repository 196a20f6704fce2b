//! Sandbox uids of a session's own: unique among the live sessions of this host (across
//! processes, by a lock file held for the session's life) and never a host account, so
//! that per-uid kernel counters (processes, inotify, message queues) and file access
//! never join two sessions, nor a session and a real user.

use std::fs;
use std::io;
use std::ops::Range;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// Container uids handed out on engines without a user namespace (rootful): far above
/// the ids of host accounts and of the usual subordinate-id ranges.
pub const ROOTFUL_UIDS: Range<u32> = 3_000_000..3_100_000;
/// Container uids handed out inside a rootless engine's user namespace (mapped to
/// subordinate ids on the host).
pub const ROOTLESS_UIDS: Range<u32> = 10_000..60_000;

/// The supervisor's uid on engines without a user namespace: outside the leased range,
/// so sandbox code never has it.
pub const ROOTFUL_AGENT_UID: u32 = ROOTFUL_UIDS.end;
/// The supervisor's uid inside a rootless engine's user namespace.
pub const ROOTLESS_AGENT_UID: u32 = ROOTLESS_UIDS.end;

/// A uid leased to one session; released when dropped (or when its process dies).
#[derive(Debug)]
pub struct UidLease {
    uid: u32,
    _lock: fs::File,
}

impl UidLease {
    /// The leased uid, as seen inside the container.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// Leases a uid of `range` that no live session on this host holds and whose host
    /// id (`to_host`; `None`: unmapped) is no host account nor in anyone's
    /// subordinate-id range (unless the range is the engine's own map).
    pub fn acquire(range: Range<u32>, to_host: impl Fn(u32) -> Option<u32>) -> Result<Self> {
        let dir = lock_dir();
        create_private_dir(&dir)?;
        let taken = HostIds::read();
        let span = range.end.saturating_sub(range.start).max(1);
        let start = u32::try_from(uuid::Uuid::new_v4().as_u128() % u128::from(span)).unwrap_or(0);
        for i in 0..span {
            let uid = range.start + (start + i) % span;
            let Some(host) = to_host(uid) else { continue };
            if taken.accounts.contains(&host) {
                continue;
            }
            if to_host(uid) == Some(uid) && taken.in_subordinate_range(host) {
                continue;
            }
            let file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(dir.join(format!("{uid}.lock")))
                .map_err(|e| Error::io(format!("opening a uid lock in {}", dir.display()), e))?;
            // SAFETY: flock on a descriptor this function owns; no memory is shared.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(UidLease { uid, _lock: file });
            }
        }
        Err(Error::Agent(format!(
            "no sandbox uid in {}..{} is free (each is a host account or held by a live session); close some sessions",
            range.start, range.end
        )))
    }
}

/// Where uid locks live: one place for every process of this host user.
fn lock_dir() -> PathBuf {
    crate::staging::runtime_dir().join("uids")
}

/// Creates `dir` (and its parents) for this user only, refusing a folder someone else owns.
pub(crate) fn create_private_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let made = fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(dir);
    made.map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let meta = fs::symlink_metadata(dir)
        .map_err(|e| Error::io(format!("checking {}", dir.display()), e))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o022 != 0 {
        return Err(Error::io(
            format!("using {}", dir.display()),
            io::Error::other("it is not a folder of this user that only this user can write"),
        ));
    }
    Ok(())
}

/// The host's accounts and subordinate-id ranges.
struct HostIds {
    accounts: std::collections::HashSet<u32>,
    subordinate: Vec<Range<u64>>,
}

impl HostIds {
    fn read() -> Self {
        let accounts = fs::read_to_string("/etc/passwd")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(':').nth(2)?.parse().ok())
            .collect();
        let subordinate = ["/etc/subuid", "/etc/subgid"]
            .iter()
            .flat_map(|p| {
                fs::read_to_string(p)
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| {
                        let mut f = l.split(':').skip(1);
                        let start: u64 = f.next()?.parse().ok()?;
                        let count: u64 = f.next()?.parse().ok()?;
                        Some(start..start + count)
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        HostIds {
            accounts,
            subordinate,
        }
    }

    fn in_subordinate_range(&self, id: u32) -> bool {
        self.subordinate.iter().any(|r| r.contains(&u64::from(id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_distinct_until_released() {
        let range = ROOTFUL_UIDS.start..ROOTFUL_UIDS.start + 40;
        let leases: Vec<UidLease> = (0..40)
            .map(|_| UidLease::acquire(range.clone(), Some).unwrap())
            .collect();
        let mut uids: Vec<u32> = leases.iter().map(UidLease::uid).collect();
        uids.sort_unstable();
        uids.dedup();
        assert_eq!(uids.len(), 40, "no two live sessions share a uid");
        let err = UidLease::acquire(range.clone(), Some).unwrap_err();
        assert!(err.to_string().contains("free"), "{err}");
        let freed = leases[7].uid();
        drop(leases);
        let again = UidLease::acquire(freed..freed + 1, Some).unwrap();
        assert_eq!(again.uid(), freed, "a released uid is reclaimed");
    }

    #[test]
    fn host_accounts_are_never_leased() {
        let root_and_daemon = 0..3;
        let err = UidLease::acquire(root_and_daemon, Some).unwrap_err();
        assert!(err.to_string().contains("free"), "{err}");
    }
}
