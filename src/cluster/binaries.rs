//! Finds the PostgreSQL server programs. Debian keeps them off PATH (in /usr/lib/postgresql/N/bin), so
//! we look on PATH first, then ask `pg_config`, then take the newest installed major version.

use std::path::{Path, PathBuf};

use super::ClusterError;

/// The directory holding `initdb`, `pg_ctl` and `postgres` of one PostgreSQL version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBinaries {
    pub bindir: PathBuf,
}

impl PgBinaries {
    /// Locates the server programs, or explains how to install them.
    pub fn find() -> Result<PgBinaries, ClusterError> {
        if let Some(dir) = on_path() {
            return Ok(PgBinaries { bindir: dir });
        }
        if let Some(dir) = from_pg_config() {
            return Ok(PgBinaries { bindir: dir });
        }
        if let Some(dir) = newest_debian_dir(Path::new("/usr/lib/postgresql")) {
            return Ok(PgBinaries { bindir: dir });
        }
        Err(ClusterError::NoBinaries)
    }

    /// The full path of one program of this installation.
    pub fn program(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }
}

fn has_server_programs(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("pg_ctl").is_file()
}

/// `initdb` on PATH; symlinks are resolved so `pg_ctl` and `postgres` of the same version are used.
fn on_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("initdb");
        if candidate.is_file() {
            let real = std::fs::canonicalize(&candidate).unwrap_or(candidate);
            let bindir = real.parent()?.to_path_buf();
            if has_server_programs(&bindir) {
                return Some(bindir);
            }
        }
    }
    None
}

fn from_pg_config() -> Option<PathBuf> {
    let out = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    has_server_programs(&dir).then_some(dir)
}

/// The highest numeric major version under `root` that has the server programs.
fn newest_debian_dir(root: &Path) -> Option<PathBuf> {
    let mut best: Option<(u32, PathBuf)> = None;
    for entry in std::fs::read_dir(root).ok()?.flatten() {
        let Some(major) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let bindir = entry.path().join("bin");
        if has_server_programs(&bindir) && best.as_ref().is_none_or(|(m, _)| major > *m) {
            best = Some((major, bindir));
        }
    }
    best.map(|(_, dir)| dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_error_says_how_to_install() {
        let msg = ClusterError::NoBinaries.to_string();
        assert!(msg.contains("install with `apt-get install -y postgresql` (Debian/Ubuntu)"));
    }

    #[test]
    fn newest_version_wins() {
        let root = tempfile::tempdir().unwrap();
        for v in ["9", "15", "13", "notaversion"] {
            let bin = root.path().join(v).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            std::fs::write(bin.join("initdb"), "").unwrap();
            std::fs::write(bin.join("pg_ctl"), "").unwrap();
        }
        assert_eq!(
            newest_debian_dir(root.path()),
            Some(root.path().join("15").join("bin"))
        );
    }
}
