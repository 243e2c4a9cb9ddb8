//! `writefile`: writes a file into the installed system.
//! Environment: DEST_DISK, FS_TYPE, DEST_PATH, CONTENTS, UID, GID, MODE, DIRMODE.
use std::{
    io::Write,
    path::{Component, Path, PathBuf},
};

use nix::{
    errno::Errno,
    fcntl::{open, openat2, OFlag, OpenHow, ResolveFlag},
    sys::stat::{fchmod, mkdirat, Mode},
    unistd::{fchown, Gid, Uid},
};

use super::{fail, mount::Mounted, ActionResult, Invocation, Succeeded};

/// Variables of EKS Anywhere's writefile image (which generates network configuration from
/// Hegel), which Tinkerbell's own writefile, and Wisp's, do not read.
const EKS_ANYWHERE_VARIABLES: &[&str] = &[
    "HEGEL_URLS",
    "BOOTCONFIG_CONTENTS",
    "STATIC_NETPLAN",
    "STATIC_BOTTLEROCKET",
    "IFNAME",
    "DHCP_TIMEOUT",
];

pub fn run(invocation: &Invocation) -> ActionResult<Succeeded> {
    // Written for another writefile: writing an empty file and reporting success would hide it.
    if let Some(name) = EKS_ANYWHERE_VARIABLES
        .iter()
        .find(|name| invocation.optional(name).is_some())
    {
        return Err(fail(format!(
            "{name} belongs to EKS Anywhere's writefile image, which Wisp's built-in writefile \
             (Tinkerbell's) does not read: run that image under a container runtime, or write \
             the file with CONTENTS"
        )));
    }
    let device = invocation.required("DEST_DISK")?;
    let fs_type = invocation.required("FS_TYPE")?;
    let destination = invocation.required("DEST_PATH")?;
    let file = FileSpec {
        path: relative_path(destination)?,
        contents: invocation.optional("CONTENTS").unwrap_or(""),
        uid: id(invocation, "UID")?,
        gid: id(invocation, "GID")?,
        mode: mode(invocation, "MODE", 0o644)?,
        dir_mode: mode(invocation, "DIRMODE", 0o755)?,
    };
    let mounted = Mounted::device(device, fs_type)?;
    write_into(&mounted.root, &file).map_err(|err| match err {
        Errno::EINVAL | Errno::ENXIO => fail(format!(
            "writing {destination} on {device}: it exists and is not a regular file"
        )),
        err => fail(format!("writing {destination} on {device}: {err}")),
    })?;
    nix::unistd::sync();
    Ok(Succeeded::Done(format!(
        "wrote {} bytes to {destination} on {device} (mode {:o}, owner {}:{})",
        file.contents.len(),
        file.mode,
        file.uid,
        file.gid
    )))
}

pub struct FileSpec<'a> {
    /// Relative to the installed system's root.
    pub path: PathBuf,
    pub contents: &'a str,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub dir_mode: u32,
}

/// Writes the file under `root`, creating the missing directories with `dir_mode` and the
/// owner. Every path is resolved as if `root` were `/` (openat2's RESOLVE_IN_ROOT): the
/// installed system's absolute symlinks, such as `/etc/localtime`, point into it, never into the
/// provisioning OS.
pub fn write_into(root: &Path, file: &FileSpec) -> nix::Result<()> {
    let root = open(root, OFlag::O_DIRECTORY | OFlag::O_PATH, Mode::empty())?;
    let in_root = |path: &Path, flags: OFlag, mode: u32| {
        let path = if path.as_os_str().is_empty() {
            Path::new(".")
        } else {
            path
        };
        openat2(
            &root,
            path,
            OpenHow::new()
                .flags(flags | OFlag::O_CLOEXEC)
                .mode(Mode::from_bits_truncate(mode))
                .resolve(ResolveFlag::RESOLVE_IN_ROOT),
        )
    };
    let owner = (Some(Uid::from_raw(file.uid)), Some(Gid::from_raw(file.gid)));
    let mut dir = PathBuf::new();
    for component in file.path.parent().into_iter().flat_map(Path::components) {
        let parent = dir.clone();
        dir.push(component);
        match in_root(&dir, OFlag::O_PATH | OFlag::O_DIRECTORY, 0) {
            Ok(_) => continue,
            Err(Errno::ENOENT) => {
                let parent = in_root(&parent, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)?;
                mkdirat(
                    &parent,
                    component.as_os_str(),
                    Mode::from_bits_truncate(file.dir_mode),
                )?;
                let created = in_root(&dir, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)?;
                // The owner first: chown clears set-id bits that chmod sets.
                fchown(&created, owner.0, owner.1)?;
                fchmod(&created, Mode::from_bits_truncate(file.dir_mode))?;
            }
            Err(err) => return Err(err),
        }
    }
    // Non-blocking, so that a FIFO at DEST_PATH fails at once (ENXIO) instead of holding the
    // action until its timeout; anything that is not a regular file is refused before a byte
    // is written.
    let written = in_root(
        &file.path,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_NONBLOCK,
        file.mode,
    )?;
    let mut handle = std::fs::File::from(written);
    let kind = handle
        .metadata()
        .map_err(|err| Errno::from_raw(err.raw_os_error().unwrap_or(libc::EIO)))?;
    if !kind.is_file() {
        return Err(Errno::EINVAL);
    }
    handle
        .set_len(0)
        .map_err(|err| Errno::from_raw(err.raw_os_error().unwrap_or(libc::EIO)))?;
    handle
        .write_all(file.contents.as_bytes())
        .map_err(|err| Errno::from_raw(err.raw_os_error().unwrap_or(libc::EIO)))?;
    fchown(&handle, owner.0, owner.1)?;
    fchmod(&handle, Mode::from_bits_truncate(file.mode))?;
    Ok(())
}

fn id(invocation: &Invocation, name: &str) -> ActionResult<u32> {
    invocation.optional(name).map_or(Ok(0), |text| {
        text.parse()
            .map_err(|_| fail(format!("{name}={text:?} is not a numeric id")))
    })
}

/// Modes are octal, written with or without the leading 0 (`0644`, `644`), as
/// Tinkerbell's writefile parses them.
pub fn mode(invocation: &Invocation, name: &str, default: u32) -> ActionResult<u32> {
    invocation.optional(name).map_or(Ok(default), |text| {
        u32::from_str_radix(text.trim_start_matches("0o"), 8)
            .ok()
            .filter(|&mode| mode <= 0o7777)
            .ok_or_else(|| fail(format!("{name}={text:?} is not an octal file mode")))
    })
}

/// DEST_PATH must be absolute and stay inside the installed system.
fn relative_path(destination: &str) -> ActionResult<PathBuf> {
    let path = Path::new(destination);
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(fail(format!(
            "DEST_PATH={destination:?} must be an absolute path without `..`"
        )));
    }
    Ok(path.components().skip(1).collect())
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn eks_anywheres_variables_fail_by_name_rather_than_write_an_empty_file() {
        let c = super::super::tests::invocation_of(
            "writefile",
            &[
                ("DEST_DISK", "/dev/nvme0n1p1"),
                ("FS_TYPE", "ext4"),
                ("DEST_PATH", "/etc/netplan/config.yaml"),
                ("STATIC_NETPLAN", "true"),
            ],
        );
        let err = run(&c).unwrap_err().to_string();
        assert!(
            err.contains("STATIC_NETPLAN belongs to EKS Anywhere"),
            "{err}"
        );
    }

    #[test]
    fn modes_are_octal_as_yaml_wrote_them() {
        // `MODE: 0644` in a template reaches the worker as the text "0644".
        let c = super::super::tests::invocation_of(
            "writefile",
            &[("MODE", "0644"), ("DIRMODE", "755"), ("BAD", "0899")],
        );
        assert_eq!(mode(&c, "MODE", 0), Ok(0o644));
        assert_eq!(mode(&c, "DIRMODE", 0), Ok(0o755));
        assert_eq!(mode(&c, "UNSET", 0o600), Ok(0o600));
        assert!(mode(&c, "BAD", 0)
            .unwrap_err()
            .to_string()
            .contains("BAD=\"0899\""));
    }

    #[test]
    fn a_fifo_at_the_destination_fails_at_once_and_nothing_is_written() {
        let root = std::env::temp_dir().join(format!("wisp-writefile-fifo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("etc")).unwrap();
        nix::unistd::mkfifo(&root.join("etc/hostname"), Mode::from_bits_truncate(0o644)).unwrap();
        let (done, outcome) = std::sync::mpsc::channel();
        let writing = root.clone();
        std::thread::spawn(move || {
            let file = FileSpec {
                path: PathBuf::from("etc/hostname"),
                contents: "node\n",
                uid: 0,
                gid: 0,
                mode: 0o644,
                dir_mode: 0o755,
            };
            done.send(write_into(&writing, &file)).unwrap();
        });
        let outcome = outcome
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("writefile blocked on the FIFO");
        assert_eq!(outcome, Err(Errno::ENXIO), "no reader: refused at once");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn absolute_symlinks_resolve_inside_the_installed_system() {
        let root = std::env::temp_dir().join(format!("wisp-writefile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("real-etc")).unwrap();
        // As in an installed system: an absolute link, meant relative to its own root.
        std::os::unix::fs::symlink("/real-etc", root.join("etc")).unwrap();
        let file = FileSpec {
            path: PathBuf::from("etc/netplan/config.yaml"),
            contents: "network: {}\n",
            uid: 0,
            gid: 0,
            mode: 0o640,
            dir_mode: 0o750,
        };
        write_into(&root, &file).unwrap();
        let written = root.join("real-etc/netplan/config.yaml");
        assert_eq!(std::fs::read_to_string(&written).unwrap(), "network: {}\n");
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&written), 0o640);
        assert_eq!(mode(&root.join("real-etc/netplan")), 0o750);
        assert!(
            !Path::new("/real-etc").exists(),
            "nothing was written outside the root"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn destinations_stay_inside_the_installed_system() {
        assert_eq!(
            relative_path("/etc/netplan/config.yaml").unwrap(),
            PathBuf::from("etc/netplan/config.yaml")
        );
        assert!(relative_path("etc/x").is_err());
        assert!(relative_path("/etc/../../x").is_err());
    }
}
