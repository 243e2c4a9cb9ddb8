//! A real Debian root filesystem, made by `debootstrap` from the mirror the machine's own apt
//! sources name (never a hard-coded host): the installed system of the end-to-end tests and
//! the demo, and the image of the container-action test. It holds what a cloud image's first
//! boot actions use: `growpart` (cloud-guest-utils), `sfdisk` (fdisk) and `resize2fs`.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};

/// Packages on top of debootstrap's `minbase`.
const EXTRA_PACKAGES: &[&str] = &["cloud-guest-utils", "fdisk", "e2fsprogs"];

/// What a cloud image leaves out and the tests never read: documentation, translations, and
/// apt's package lists and downloads. Halves the image the VMs stream.
const SLIMMED: &[&str] = &[
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/cache/apt",
    "var/lib/apt/lists",
];

/// The Debian suite and mirror this machine's apt uses, from `/etc/os-release` and the deb822
/// `debian.sources` (or the one-line `sources.list`).
pub struct Mirror {
    pub codename: String,
    pub uri: String,
}

pub fn mirror() -> anyhow::Result<Mirror> {
    let release = std::fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    let codename = release
        .lines()
        .find_map(|line| line.strip_prefix("VERSION_CODENAME="))
        .context("/etc/os-release names no VERSION_CODENAME")?
        .trim_matches('"')
        .to_string();
    let deb822 = Path::new("/etc/apt/sources.list.d/debian.sources");
    let uri = if deb822.exists() {
        let sources = std::fs::read_to_string(deb822)
            .with_context(|| format!("reading {}", deb822.display()))?;
        sources
            .split("\n\n")
            .filter(|stanza| {
                stanza.lines().any(|line| {
                    line.starts_with("Suites:")
                        && line.split_whitespace().any(|suite| suite == codename)
                })
            })
            .find_map(|stanza| stanza.lines().find_map(|line| line.strip_prefix("URIs:")))
            .and_then(|uris| uris.split_whitespace().next().map(str::to_string))
    } else {
        let list = std::fs::read_to_string("/etc/apt/sources.list")
            .context("reading /etc/apt/sources.list")?;
        list.lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .find(|words| words.first() == Some(&"deb") && words.contains(&codename.as_str()))
            .and_then(|words| {
                words
                    .iter()
                    .find(|w| w.contains("://"))
                    .map(|w| w.to_string())
            })
    }
    .with_context(|| format!("apt's sources name no mirror for {codename}"))?;
    Ok(Mirror { codename, uri })
}

/// The Debian root in `cache`, bootstrapped once (about half a minute) and reused. Needs root.
pub fn root(cache: &Path) -> anyhow::Result<PathBuf> {
    let mirror = mirror()?;
    let root = cache.join(format!(
        "debian-{}-{}",
        mirror.codename,
        EXTRA_PACKAGES.join("+")
    ));
    if root.join("usr/bin/growpart").exists() {
        return Ok(root);
    }
    // Bootstrapped beside its final place and renamed when whole, so that an interrupted run
    // leaves nothing that looks finished.
    let partial = root.with_extension("partial");
    if partial.exists() {
        // An interrupted debootstrap can leave /proc, /sys or /dev mounted in its target:
        // unmounted first, so that removing the target removes nothing of the host's.
        unmount_beneath(&partial)?;
        std::fs::remove_dir_all(&partial)
            .with_context(|| format!("removing {}", partial.display()))?;
    }
    std::fs::create_dir_all(cache)?;
    let status = Command::new("debootstrap")
        .args(["--variant=minbase", "--include"])
        .arg(EXTRA_PACKAGES.join(","))
        .arg(&mirror.codename)
        .arg(&partial)
        .arg(&mirror.uri)
        .status()
        .context("running debootstrap (is the debootstrap package installed?)")?;
    if !status.success() {
        bail!(
            "debootstrap of {} from {} failed ({status})",
            mirror.codename,
            mirror.uri
        );
    }
    for slimmed in SLIMMED {
        let path = partial.join(slimmed);
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("removing {}", path.display()))?;
        }
    }
    std::fs::rename(&partial, &root)?;
    Ok(root)
}

/// Unmounts whatever is mounted at or below `dir`, deepest first.
fn unmount_beneath(dir: &Path) -> anyhow::Result<()> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .filter(|point| Path::new(point).starts_with(dir))
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.len()));
    for point in points {
        let status = Command::new("umount")
            .args(["--lazy", point])
            .status()
            .context("running umount")?;
        if !status.success() {
            bail!("could not unmount {point}, left by an interrupted debootstrap");
        }
    }
    Ok(())
}
