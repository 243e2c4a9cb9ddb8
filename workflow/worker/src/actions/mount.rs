//! Mounting the installed system's filesystem for the actions that write into it.
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::{fail, ActionResult};

/// A mounted filesystem, unmounted when dropped (also when the action fails midway).
pub struct Mounted {
    pub root: PathBuf,
    binds: Vec<PathBuf>,
}

impl Mounted {
    /// Mounts `device` (of type `fs_type`) on a fresh directory.
    pub fn device(device: &str, fs_type: &str) -> ActionResult<Mounted> {
        let root = std::env::temp_dir().join(format!("wisp-action-{}", std::process::id()));
        std::fs::create_dir_all(&root)
            .map_err(|err| fail(format!("creating {}: {err}", root.display())))?;
        // nodev and nosuid: the image is not trusted; a device node in it must not open the
        // provisioning OS's disks, nor a set-id binary in it gain anything.
        mount(
            Some(device),
            &root,
            Some(fs_type),
            MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
            None::<&str>,
        )
        .map_err(|err| fail(format!("mounting {device} ({fs_type}): {err}")))?;
        Ok(Mounted {
            root,
            binds: Vec::new(),
        })
    }

    /// Opens a file of the mounted system for reading, resolving `path` as if its root were `/`
    /// (openat2's RESOLVE_IN_ROOT): its absolute symlinks lead into it, never into the
    /// provisioning OS.
    pub fn open(&self, path: &str) -> ActionResult<std::fs::File> {
        let opened = nix::fcntl::open(
            &self.root,
            nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_PATH,
            nix::sys::stat::Mode::empty(),
        )
        .and_then(|root| {
            nix::fcntl::openat2(
                &root,
                Path::new(path.trim_start_matches('/')),
                nix::fcntl::OpenHow::new()
                    .flags(nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC)
                    .resolve(nix::fcntl::ResolveFlag::RESOLVE_IN_ROOT),
            )
        });
        opened
            .map(std::fs::File::from)
            .map_err(|err| fail(format!("opening {path} on the installed system: {err}")))
    }

    /// Binds the provisioning OS's /dev, /proc and /sys into the root, for a chroot.
    pub fn bind_system(&mut self) -> ActionResult<()> {
        for dir in ["dev", "proc", "sys"] {
            let target = self.root.join(dir);
            // Not followed: in an image with `dev -> /`, binding onto the link would bind over
            // the provisioning OS's own root.
            match std::fs::symlink_metadata(&target) {
                Ok(kind) if kind.is_dir() => {}
                Ok(kind) if kind.is_symlink() => {
                    return Err(fail(format!(
                        "the installed system's /{dir} is a symlink; refusing to bind over it"
                    )))
                }
                _ => continue,
            }
            mount(
                Some(Path::new("/").join(dir).as_path()),
                &target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|err| fail(format!("binding /{dir} into the chroot: {err}")))?;
            self.binds.push(target);
        }
        Ok(())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        for target in self.binds.iter().rev().chain(std::iter::once(&self.root)) {
            if let Err(err) = umount2(target, MntFlags::MNT_DETACH) {
                tracing::warn!("unmounting {}: {err}", target.display());
            }
        }
        let _ = std::fs::remove_dir(&self.root);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_system_directory_that_is_a_symlink_is_not_bound_over() {
        let root = std::env::temp_dir().join(format!("wisp-mount-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        // An image whose /dev points at the provisioning OS's root.
        std::os::unix::fs::symlink("/", root.join("dev")).unwrap();
        let mut mounted = Mounted {
            root: root.clone(),
            binds: Vec::new(),
        };
        let refused = mounted.bind_system().unwrap_err();
        assert!(
            refused.to_string().contains("/dev is a symlink"),
            "{refused}"
        );
        assert!(mounted.binds.is_empty(), "nothing was bound");
        std::fs::remove_file(root.join("dev")).unwrap();
    }
}
