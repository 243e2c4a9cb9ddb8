//! `writefile`: writes a file into the installed system.
//! Environment: DEST_DISK, FS_TYPE, DEST_PATH, CONTENTS, UID, GID, MODE, DIRMODE.
use std::{
    fs::Permissions,
    os::unix::fs::{chown, PermissionsExt},
    path::{Component, Path, PathBuf},
};

use super::{fail, mount::Mounted, ActionResult, Context, Outcome};

pub fn run(context: &Context) -> ActionResult<Outcome> {
    let device = context.required("DEST_DISK")?;
    let fs_type = context.required("FS_TYPE")?;
    let destination = context.required("DEST_PATH")?;
    let contents = context.optional("CONTENTS").unwrap_or("");
    let uid = id(context, "UID")?;
    let gid = id(context, "GID")?;
    let dir_mode = mode(context, "DIRMODE", 0o755)?;
    let mode = mode(context, "MODE", 0o644)?;
    let relative = relative_path(destination)?;
    let mounted = Mounted::device(device, fs_type)?;
    let path = mounted.root.join(&relative);
    // Create the missing directories one by one, each with DIRMODE and the owner.
    let mut dir = mounted.root.clone();
    for component in relative.parent().into_iter().flat_map(Path::components) {
        dir.push(component);
        if !dir.exists() {
            std::fs::create_dir(&dir)
                .and_then(|()| std::fs::set_permissions(&dir, Permissions::from_mode(dir_mode)))
                .and_then(|()| chown(&dir, Some(uid), Some(gid)))
                .map_err(|err| fail(format!("creating {}: {err}", shown(&mounted, &dir))))?;
        }
    }
    std::fs::write(&path, contents)
        .and_then(|()| std::fs::set_permissions(&path, Permissions::from_mode(mode)))
        .and_then(|()| chown(&path, Some(uid), Some(gid)))
        .map_err(|err| fail(format!("writing {destination} on {device}: {err}")))?;
    nix::unistd::sync();
    Ok(Outcome::Done(format!(
        "wrote {} bytes to {destination} on {device} (mode {mode:o}, owner {uid}:{gid})",
        contents.len()
    )))
}

fn shown(mounted: &Mounted, path: &Path) -> String {
    format!(
        "/{}",
        path.strip_prefix(&mounted.root).unwrap_or(path).display()
    )
}

fn id(context: &Context, name: &str) -> ActionResult<u32> {
    context.optional(name).map_or(Ok(0), |text| {
        text.parse()
            .map_err(|_| fail(format!("{name}={text:?} is not a numeric id")))
    })
}

/// Modes are octal, written with or without the leading 0 (`0644`, `644`), as
/// Tinkerbell's writefile parses them.
pub fn mode(context: &Context, name: &str, default: u32) -> ActionResult<u32> {
    context.optional(name).map_or(Ok(default), |text| {
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
    use std::collections::BTreeMap;

    use super::*;

    fn context(pairs: &[(&str, &str)]) -> Context {
        Context {
            image: "writefile".into(),
            command: Vec::new(),
            volumes: Vec::new(),
            environment: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            deadline: None,
        }
    }

    #[test]
    fn modes_are_octal_as_yaml_wrote_them() {
        // `MODE: 0644` in a template reaches the worker as the text "0644".
        let c = context(&[("MODE", "0644"), ("DIRMODE", "755"), ("BAD", "0899")]);
        assert_eq!(mode(&c, "MODE", 0), Ok(0o644));
        assert_eq!(mode(&c, "DIRMODE", 0), Ok(0o755));
        assert_eq!(mode(&c, "UNSET", 0o600), Ok(0o600));
        assert!(mode(&c, "BAD", 0)
            .unwrap_err()
            .to_string()
            .contains("BAD=\"0899\""));
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
