//! The data directory holds the resources, the runs, the leases and the key that signs every
//! machine's token: only its owner may read it, so it and its files are created 0700 and 0600.
use std::{
    fs::{DirBuilder, OpenOptions},
    io,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::Path,
};

/// Creates `dir` (and any missing parent) readable by its owner alone, and makes an existing
/// `dir` so (earlier versions created it with the umask's modes).
pub fn create_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    restrict(dir, 0o700)
}

/// Takes the group's and others' permissions away from `path`, if it has any.
pub fn restrict(path: &Path, mode: u32) -> io::Result<()> {
    let current = std::fs::metadata(path)?.permissions().mode() & 0o7777;
    if current & 0o077 != 0 {
        tracing::warn!(path = %path.display(), "readable beyond its owner (mode {current:o}); now {mode:o}");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Options that create a file readable by its owner alone.
pub fn file_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(0o600);
    options
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{LeaseJournal, RedbStore};

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_stores_create_their_directory_and_files_for_their_owner_alone() {
        let parent = tempfile::tempdir().unwrap();
        let data = parent.path().join("wisp");
        RedbStore::open(&data).unwrap();
        LeaseJournal::open(&data).unwrap();
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("wisp.redb")), 0o600);
        assert_eq!(mode(&data.join("leases.journal")), 0o600);
    }

    #[test]
    fn what_an_earlier_version_left_open_is_closed_when_opened() {
        let parent = tempfile::tempdir().unwrap();
        let data = parent.path().join("wisp");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        for file in ["wisp.redb", "leases.journal"] {
            std::fs::write(data.join(file), b"").unwrap();
            std::fs::set_permissions(data.join(file), std::fs::Permissions::from_mode(0o644))
                .unwrap();
        }
        RedbStore::open(&data).unwrap();
        LeaseJournal::open(&data).unwrap();
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("wisp.redb")), 0o600);
        assert_eq!(mode(&data.join("leases.journal")), 0o600);
    }
}
