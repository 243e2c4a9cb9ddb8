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
        mount(
            Some(device),
            &root,
            Some(fs_type),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|err| fail(format!("mounting {device} ({fs_type}): {err}")))?;
        Ok(Mounted {
            root,
            binds: Vec::new(),
        })
    }

    /// Binds the provisioning OS's /dev, /proc and /sys into the root, for a chroot.
    pub fn bind_system(&mut self) -> ActionResult<()> {
        for dir in ["dev", "proc", "sys"] {
            let target = self.root.join(dir);
            if !target.is_dir() {
                continue;
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
