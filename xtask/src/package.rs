//! `cargo xtask package`: the Debian package of the appliance, `target/debian/wisp_<version>_amd64.deb`:
//! the `wisp` binary, its systemd unit (`boot-userspace/packaging/wisp.service`), the default
//! configuration (every setting documented, from `wisp default-config`), shell completions and
//! man pages generated from the CLI's own definition, and a dependency on Debian's `ipxe` for the
//! iPXE binaries.
//!
//! Built with `dpkg-deb` from a staged tree rather than with cargo-deb: the tree is a dozen files,
//! several of them made by running the binary, which cargo-deb's manifest cannot describe.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};

use crate::shell::{run, step};

/// Builds the package from the release build (`release`), or from the debug build that
/// `cargo xtask test` has just made and its package test installs; returns its path.
pub fn build(root: &Path, release: bool) -> anyhow::Result<PathBuf> {
    let wisp = match release {
        true => {
            step("cargo build --release");
            run("cargo", &["build", "--release", "--bins"])?;
            root.join("target/release/wisp")
        }
        false => root.join("target/debug/wisp"),
    };
    let version = env!("CARGO_PKG_VERSION");
    let name = format!("wisp_{version}_amd64");
    let out = root.join("target/debian");
    let stage = out.join(&name);
    let _ = std::fs::remove_dir_all(&stage);
    step(&format!("staging {}", stage.display()));
    let packaging = root.join("boot-userspace/packaging");
    let install = |from: &Path, to: &str, mode: u32| -> anyhow::Result<()> {
        let target = stage.join(to);
        std::fs::create_dir_all(target.parent().context("a file in a directory")?)?;
        std::fs::copy(from, &target)
            .with_context(|| format!("copying {} to {to}", from.display()))?;
        set_mode(&target, mode)
    };
    let write = |to: &str, content: &[u8], mode: u32| -> anyhow::Result<()> {
        let target = stage.join(to);
        std::fs::create_dir_all(target.parent().context("a file in a directory")?)?;
        std::fs::write(&target, content)?;
        set_mode(&target, mode)
    };
    install(&wisp, "usr/bin/wisp", 0o755)?;
    // As Debian ships binaries: without their debug information.
    run(
        "strip",
        &[
            "--strip-unneeded",
            stage.join("usr/bin/wisp").to_str().context("UTF-8 path")?,
        ],
    )?;
    install(
        &packaging.join("wisp.service"),
        "lib/systemd/system/wisp.service",
        0o644,
    )?;
    write(
        "etc/wisp/wisp.toml",
        &output(&wisp, &["default-config"])?,
        0o644,
    )?;
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/wisp"),
        ("zsh", "usr/share/zsh/vendor-completions/_wisp"),
        ("fish", "usr/share/fish/vendor_completions.d/wisp.fish"),
    ] {
        write(path, &output(&wisp, &["completion", shell])?, 0o644)?;
    }
    let man = stage.join("usr/share/man/man1");
    std::fs::create_dir_all(&man)?;
    output(&wisp, &["man-pages", man.to_str().context("UTF-8 path")?])?;
    for page in std::fs::read_dir(&man)? {
        run(
            "gzip",
            &["-9n", page?.path().to_str().context("UTF-8 path")?],
        )?;
    }
    install(
        &packaging.join("README.Debian"),
        "usr/share/doc/wisp/README.Debian",
        0o644,
    )?;
    install(
        &packaging.join("copyright"),
        "usr/share/doc/wisp/copyright",
        0o644,
    )?;
    for script in ["postinst", "postrm"] {
        install(&packaging.join(script), &format!("DEBIAN/{script}"), 0o755)?;
    }
    write("DEBIAN/conffiles", b"/etc/wisp/wisp.toml\n", 0o644)?;
    let installed_kib = disk_usage_kib(&stage)?;
    write(
        "DEBIAN/control",
        format!(
            "Package: wisp\n\
             Version: {version}\n\
             Architecture: amd64\n\
             Maintainer: Wisp developers <wisp@localhost>\n\
             Section: net\n\
             Priority: optional\n\
             Installed-Size: {installed_kib}\n\
             Depends: libc6 (>= {glibc}), libgcc-s1, ipxe, adduser\n\
             Recommends: ipmitool\n\
             Suggests: etcd-server\n\
             Description: XDP-accelerated bare-metal provisioning appliance\n \
             Wisp netboots the machines it owns (DHCP, TFTP, iPXE, HTTP) and runs their\n \
             workflows; an XDP program drops every other machine's DHCP in the kernel, so that\n \
             another DHCP server on the LAN keeps serving them. It reads Tinkerbell's\n \
             resources unchanged.\n",
            glibc = glibc_needed(&wisp)?,
        )
        .as_bytes(),
        0o644,
    )?;
    let deb = out.join(format!("{name}.deb"));
    step(&format!("dpkg-deb --build {}", deb.display()));
    run(
        "dpkg-deb",
        &[
            "--build",
            "--root-owner-group",
            stage.to_str().context("UTF-8 path")?,
            deb.to_str().context("UTF-8 path")?,
        ],
    )?;
    println!("package: {}", deb.display());
    Ok(deb)
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// What `program args` prints; an error with its stderr when it fails.
fn output(program: &Path, args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    if !output.status.success() {
        bail!(
            "{} {} failed: {}",
            program.display(),
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output.stdout)
}

/// The newest glibc symbol version the binary links against: the `libc6` it needs.
fn glibc_needed(binary: &Path) -> anyhow::Result<String> {
    let symbols = output(
        Path::new("objdump"),
        &["-T", binary.to_str().context("UTF-8")?],
    )?;
    let text = String::from_utf8_lossy(&symbols);
    let mut versions: Vec<Vec<u32>> = text
        .split("GLIBC_")
        .skip(1)
        .filter_map(|rest| {
            let version: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            version
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<Vec<u32>>>()
        })
        .collect();
    versions.sort();
    let newest = versions
        .last()
        .context("the binary names no glibc version")?;
    Ok(newest
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join("."))
}

/// The staged tree's size, without DEBIAN/, in KiB, as dpkg counts Installed-Size.
fn disk_usage_kib(stage: &Path) -> anyhow::Result<u64> {
    fn walk(path: &Path, total: &mut u64) -> std::io::Result<()> {
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            if entry.file_name() == "DEBIAN" {
                continue;
            }
            let metadata = entry.metadata()?;
            if metadata.is_dir() {
                walk(&entry.path(), total)?;
            } else {
                *total += metadata.len().div_ceil(1024);
            }
        }
        Ok(())
    }
    let mut total = 0;
    walk(stage, &mut total)?;
    Ok(total)
}
