//! The provisioning OS build: the same inputs give the same bytes, and the initramfs holds what
//! its init needs.
use std::{io::Read, path::Path};

use wisp_images::{kernel::debian_kernel, provisioning};
use wisp_tests::{repo_root, worker_binary, TempDir};

fn initramfs_entries(initramfs: &Path) -> Vec<String> {
    let mut archive = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(initramfs).expect("the initramfs"))
        .read_to_end(&mut archive)
        .expect("gzip");
    // newc: "070701", 13 fields of 8 hex digits, the name, padding to 4, the data, padding.
    let mut names = Vec::new();
    let mut at = 0;
    while at + 110 <= archive.len() {
        assert_eq!(&archive[at..at + 6], b"070701", "a newc header at {at}");
        let field = |index: usize| {
            let start = at + 6 + index * 8;
            usize::from_str_radix(std::str::from_utf8(&archive[start..start + 8]).unwrap(), 16)
                .unwrap()
        };
        let (size, name_size) = (field(6), field(11));
        let name =
            String::from_utf8_lossy(&archive[at + 110..at + 110 + name_size - 1]).into_owned();
        if name == "TRAILER!!!" {
            break;
        }
        names.push(name);
        at = (at + 110 + name_size).next_multiple_of(4);
        at = (at + size).next_multiple_of(4);
    }
    names
}

#[test]
fn the_provisioning_os_builds_reproducibly_with_what_its_init_needs() {
    let kernel = debian_kernel(&repo_root().join("target/images-cache")).expect("Debian's kernel");
    let work = TempDir::new("images");
    let build = |name: &str| {
        provisioning::build(
            &work.join(name),
            &kernel,
            Path::new("/bin/busybox"),
            &worker_binary(),
        )
        .expect("build the provisioning OS")
    };
    let (first, second) = (build("first"), build("second"));
    let bytes = |path: &Path| std::fs::read(path).expect("read");
    assert!(
        bytes(&first.initramfs) == bytes(&second.initramfs),
        "two builds of the same inputs differ"
    );
    assert_eq!(bytes(&first.vmlinuz), bytes(&kernel.vmlinuz));

    let entries = initramfs_entries(&first.initramfs);
    for needed in [
        "init",
        "bin/busybox",
        "bin/wisp-worker",
        "etc/wisp/modules",
        "etc/wisp/udhcpc",
    ] {
        assert!(
            entries.iter().any(|e| e == needed),
            "{needed} in {entries:?}"
        );
    }
    for module in ["nvme.ko", "virtio_net.ko", "e1000.ko", "ext4.ko", "jbd2.ko"] {
        assert!(
            entries.iter().any(|e| e.ends_with(&format!("/{module}"))),
            "{module} (or a dependency) is missing"
        );
    }
    // The cache's record of the inputs names the kernel.
    let stamp = std::fs::read_to_string(work.join("first/inputs")).expect("the stamp");
    assert!(stamp.contains(&kernel.version));
    // Modules are archived in load order: dependencies first.
    let position = |name: &str| entries.iter().position(|e| e.ends_with(name)).expect(name);
    assert!(position("/jbd2.ko") < position("/ext4.ko"));
}
