//! The data directory holds the resources, the runs, the leases and the key that signs every
//! machine's token: only its owner may read it, so it and its files are created 0700 and 0600.
use std::{
    fs::{DirBuilder, OpenOptions},
    io::{self, Write as _},
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

/// A secret kept in a file of the data directory: read (and narrowed to 0600) when it exists;
/// otherwise made by `make`, written aside, fsync'd and renamed into place, and the directory
/// fsync'd, so that neither a crash nor a power loss leaves a short secret or none after it was
/// handed out. `valid` says whether what the file holds can be used.
pub fn load_or_create_secret(
    path: &Path,
    valid: impl Fn(&[u8]) -> bool,
    make: impl FnOnce() -> Vec<u8>,
) -> io::Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) if valid(&bytes) => {
            restrict(path, 0o600)?;
            return Ok(bytes);
        }
        Ok(_) => {
            // A file cut short or overwritten: kept aside for whoever looks into it, and
            // replaced, rather than refusing to start.
            let aside = path.with_extension("invalid");
            tracing::error!(
                path = %path.display(),
                aside = %aside.display(),
                "the secret is not valid; it is moved aside and a new one made"
            );
            std::fs::rename(path, &aside)?;
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let secret = make();
    let partial = path.with_extension("new");
    let mut file = file_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&partial)?;
    file.write_all(&secret)?;
    file.sync_all()?;
    std::fs::rename(&partial, path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()?;
    Ok(secret)
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
    fn a_secret_is_made_once_kept_private_and_replaced_when_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.token");
        let valid = |bytes: &[u8]| bytes.len() == 4;
        let first = load_or_create_secret(&path, valid, || b"abcd".to_vec()).unwrap();
        assert_eq!(mode(&path), 0o600);
        let again = load_or_create_secret(&path, valid, || b"efgh".to_vec()).unwrap();
        assert_eq!(again, first, "an existing secret is kept");
        std::fs::write(&path, b"ab").unwrap();
        let replaced = load_or_create_secret(&path, valid, || b"ijkl".to_vec()).unwrap();
        assert_eq!(replaced, b"ijkl");
        assert_eq!(
            std::fs::read(path.with_extension("invalid")).unwrap(),
            b"ab"
        );
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
