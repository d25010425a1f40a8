//! Who the Postgres programs run as. Postgres refuses to run as root, and CI runs everything as root,
//! so as root we drop to the `postgres` OS user in the child process; otherwise the caller's own
//! identity is fine.

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::ClusterError;

/// The unprivileged identity a child process switches to, or none when the caller is not root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// The name of the OS user Postgres runs as when we are root.
pub const SERVER_OS_USER: &str = "postgres";

impl RunAs {
    /// `Some(postgres)` when running as root, `None` (run as the caller) otherwise.
    pub fn detect() -> Result<Option<RunAs>, ClusterError> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(None);
        }
        lookup(SERVER_OS_USER)
            .map(Some)
            .ok_or(ClusterError::NoServerUser)
    }

    /// Makes a tokio child process run as this user.
    pub fn apply(&self, cmd: &mut tokio::process::Command) {
        cmd.uid(self.uid).gid(self.gid);
    }

    /// Makes a std child process run as this user (for synchronous clean-up in `Drop`).
    pub fn apply_std(&self, cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        cmd.uid(self.uid).gid(self.gid);
    }

    /// Gives one file or directory to this user (not recursive).
    pub fn chown(&self, path: &Path) -> Result<(), ClusterError> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .map_err(|e| ClusterError::io(format!("cannot chown {}", path.display()), e))
    }

    /// Checks that this user can reach `dir`: every ancestor must be searchable by it, or Postgres
    /// fails later with a less helpful "permission denied".
    pub fn check_reachable(&self, dir: &Path) -> Result<(), ClusterError> {
        for ancestor in dir.ancestors().skip(1) {
            let Ok(meta) = std::fs::metadata(ancestor) else {
                continue;
            };
            let mode = meta.mode();
            let searchable = if meta.uid() == self.uid {
                mode & 0o100 != 0
            } else if meta.gid() == self.gid {
                mode & 0o010 != 0
            } else {
                mode & 0o001 != 0
            };
            if !searchable {
                return Err(ClusterError::Layout {
                    path: dir.to_path_buf(),
                    message: format!(
                        "the `{SERVER_OS_USER}` OS user cannot enter {} (mode {:o}); choose a \
                         directory under /tmp or run `chmod o+x {}`",
                        ancestor.display(),
                        mode & 0o7777,
                        ancestor.display()
                    ),
                });
            }
        }
        Ok(())
    }
}

fn lookup(name: &str) -> Option<RunAs> {
    let cname = CString::new(name).ok()?;
    // SAFETY: cname is a valid NUL-terminated string; getpwnam returns NULL or a pointer to a static
    // record that we read immediately, before any other call could overwrite it.
    unsafe {
        let pw = libc::getpwnam(cname.as_ptr());
        if pw.is_null() {
            return None;
        }
        Some(RunAs {
            uid: (*pw).pw_uid,
            gid: (*pw).pw_gid,
        })
    }
}
