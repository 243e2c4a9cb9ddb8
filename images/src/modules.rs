//! Kernel modules for an initramfs, in load order. Debian's kernel package carries no
//! modules.dep (depmod makes it on install), so dependencies are read from each module's
//! `.modinfo` section (`depends=`).
use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context};
use object::{Object, ObjectSection};

/// Every module under `modules_dir` (`lib/modules/<version>`), by name (`virtio_net`).
fn index(modules_dir: &Path) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut found = BTreeMap::new();
    let mut pending = vec![modules_dir.join("kernel")];
    while let Some(dir) = pending.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Some(name) = path
                .file_name()
                .and_then(|name| name.to_str())
                .and_then(|name| name.strip_suffix(".ko"))
            {
                found.insert(name.replace('-', "_"), path);
            }
        }
    }
    Ok(found)
}

/// The modules a module needs loaded first.
fn depends(module: &Path) -> anyhow::Result<Vec<String>> {
    let bytes = std::fs::read(module)?;
    let file = object::File::parse(bytes.as_slice())
        .with_context(|| format!("{} is not an ELF module", module.display()))?;
    let Some(section) = file.section_by_name(".modinfo") else {
        return Ok(Vec::new());
    };
    let data = section.data()?;
    Ok(data
        .split(|&byte| byte == 0)
        .filter_map(|field| field.strip_prefix(b"depends="))
        .flat_map(|list| list.split(|&byte| byte == b','))
        .filter(|name| !name.is_empty())
        .map(|name| String::from_utf8_lossy(name).replace('-', "_"))
        .collect())
}

/// `wanted` and what they depend on, dependencies first, as paths relative to `modules_dir`.
pub fn resolve(modules_dir: &Path, wanted: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
    let index = index(modules_dir)?;
    let mut ordered = Vec::new();
    let mut seen = HashSet::new();
    fn visit(
        name: &str,
        index: &BTreeMap<String, PathBuf>,
        seen: &mut HashSet<String>,
        ordered: &mut Vec<PathBuf>,
    ) -> anyhow::Result<()> {
        if !seen.insert(name.to_string()) {
            return Ok(());
        }
        let Some(path) = index.get(name) else {
            bail!("the kernel has no module {name:?}");
        };
        for dependency in depends(path)? {
            visit(&dependency, index, seen, ordered)?;
        }
        ordered.push(path.clone());
        Ok(())
    }
    for name in wanted {
        visit(&name.replace('-', "_"), &index, &mut seen, &mut ordered)?;
    }
    Ok(ordered
        .into_iter()
        .map(|path| path.strip_prefix(modules_dir).map(Path::to_path_buf))
        .collect::<Result<_, _>>()?)
}
