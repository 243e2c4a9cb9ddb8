//! The boot files: the iPXE binaries, loaded into memory once at start. TFTP serves them to
//! firmware, boot HTTP to UEFI HTTP boot clients, and DHCP chooses among those that exist.
use std::{collections::BTreeMap, path::Path, sync::Arc};

use anyhow::Context as _;

/// The iPXE binaries, by the file name clients ask for.
pub struct BootFiles {
    files: BTreeMap<String, Arc<[u8]>>,
}

/// The iPXE builds Wisp serves, as Debian's `ipxe` package names them.
pub const IPXE_BINARIES: &[&str] = &[
    "undionly.kpxe",
    "ipxe.efi",
    "snponly.efi",
    "ipxe-arm64.efi",
    "snponly-arm64.efi",
];

impl BootFiles {
    /// Loads whichever of [`IPXE_BINARIES`] exist in `dir`. None existing is an error: the
    /// appliance could boot nothing.
    pub fn load(dir: &Path) -> anyhow::Result<BootFiles> {
        let mut files = BTreeMap::new();
        for name in IPXE_BINARIES {
            let path = dir.join(name);
            match std::fs::read(&path) {
                Ok(bytes) => {
                    files.insert(name.to_string(), Arc::from(bytes));
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
            }
        }
        anyhow::ensure!(
            !files.is_empty(),
            "no iPXE binaries in {} (install Debian's `ipxe` package, or pass --ipxe-dir)",
            dir.display()
        );
        Ok(BootFiles { files })
    }

    /// The set of files, as given (tests build it without a directory).
    #[cfg(test)]
    pub(crate) fn from_named(files: impl IntoIterator<Item = (String, Arc<[u8]>)>) -> BootFiles {
        BootFiles {
            files: files.into_iter().collect(),
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<[u8]>> {
        self.files.get(name)
    }
}
