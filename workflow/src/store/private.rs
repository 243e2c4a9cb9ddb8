//! The data directory holds the resources, the runs, the leases and the key that signs every
//! machine's token: only its owner may read it, so it and its files are created 0700 and 0600.
use std::{
    fs::{DirBuilder, OpenOptions},
    io,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::Path,
};

/// Creates `dir` (and any missing parent) readable by its owner alone.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Options that create a file readable by its owner alone.
pub fn file_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(0o600);
    options
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

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
}
