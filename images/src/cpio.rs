//! A writer for the cpio `newc` format, the one the kernel unpacks as an initramfs.
use std::{collections::BTreeSet, io::Write, path::Path};

use flate2::{write::GzEncoder, Compression};

/// An initramfs being assembled in memory. Entries keep the order they were added in, and a
/// file's parent directories must be added before it ([`Archive::parents`] does that).
#[derive(Default)]
pub struct Archive {
    bytes: Vec<u8>,
    next_inode: u32,
    directories: BTreeSet<String>,
}

impl Archive {
    pub fn directory(&mut self, path: &str) -> &mut Self {
        self.directories.insert(path.to_string());
        self.entry(path, 0o040755, &[])
    }

    /// Adds the directories above `path` that are not in the archive yet, outermost first.
    pub fn parents(&mut self, path: &str) -> &mut Self {
        let missing: Vec<String> = Path::new(path)
            .ancestors()
            .skip(1)
            .filter(|dir| !dir.as_os_str().is_empty())
            .map(|dir| dir.to_string_lossy().into_owned())
            .filter(|dir| !self.directories.contains(dir))
            .collect();
        for dir in missing.iter().rev() {
            self.directory(dir);
        }
        self
    }

    pub fn file(&mut self, path: &str, mode: u32, contents: &[u8]) -> &mut Self {
        self.entry(path, 0o100000 | mode, contents)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.entry(path, 0o120777, target.as_bytes())
    }

    /// A character device node, such as /dev/console (5:1), which the kernel needs before init.
    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) -> &mut Self {
        self.header(path, 0o020600, 0, (major, minor));
        self
    }

    fn entry(&mut self, path: &str, mode: u32, contents: &[u8]) -> &mut Self {
        self.header(path, mode, contents.len(), (0, 0));
        self.bytes.extend_from_slice(contents);
        self.pad();
        self
    }

    fn header(&mut self, path: &str, mode: u32, size: usize, (rdev_major, rdev_minor): (u32, u32)) {
        self.next_inode += 1;
        let name_size = path.len() + 1;
        let fields = [
            self.next_inode,
            mode,
            0,
            0,
            1,
            0,
            size as u32,
            0,
            0,
            rdev_major,
            rdev_minor,
            name_size as u32,
            0,
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(path.as_bytes());
        self.bytes.push(0);
        self.pad();
    }

    /// Headers and file data are aligned to four bytes.
    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    /// The finished archive, gzip-compressed.
    pub fn finish(mut self) -> std::io::Result<Vec<u8>> {
        self.header("TRAILER!!!", 0, 0, (0, 0));
        let mut gzip = GzEncoder::new(Vec::new(), Compression::default());
        gzip.write_all(&self.bytes)?;
        gzip.finish()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn writes_newc_headers_padding_and_trailer() {
        let mut archive = Archive::default();
        archive.directory("bin").file("bin/hello", 0o755, b"hi\n");
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(archive.finish().unwrap().as_slice())
            .read_to_end(&mut raw)
            .unwrap();
        assert!(raw.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&raw);
        assert!(text.contains("bin/hello\0"));
        assert!(text.contains("hi\n"));
        assert!(text.contains("TRAILER!!!"));
        assert_eq!(raw.len() % 4, 0);
        // The file's own header, the 110 bytes before its name: its mode (the second field,
        // after the magic and the inode) is 100755 and its size (the seventh) is 3.
        let name = text.find("bin/hello\0").unwrap();
        let header = &text[name - 110..name];
        assert!(header.starts_with("070701"), "{header}");
        let field = |index: usize| &header[6 + index * 8..6 + (index + 1) * 8];
        assert_eq!(field(1), format!("{:08x}", 0o100755), "{header}");
        assert_eq!(field(6), format!("{:08x}", 3), "{header}");
    }
}
