//! `image2disk`: streams an OS image over HTTP onto a block device.
//! Environment: IMG_URL, DEST_DISK, COMPRESSED.
//!
//! The format is read from the image's first bytes rather than its name: raw, or with
//! `COMPRESSED=true` gzip, xz or zstd; qcow2 is recognised either way. A raw or compressed image
//! is one sequential stream, written as it arrives. A qcow2 image is not laid out in disk order,
//! so its clusters are fetched with HTTP Range requests, in the order of the disk.
use std::{
    fs::{File, OpenOptions},
    io::{self, BufRead, BufReader, Read, Write},
    os::unix::fs::FileExt,
    time::{Duration, Instant},
};

use super::{fail, ActionError, ActionResult, Context, Outcome};

const WRITE_BUFFER: usize = 4 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Raw,
    Gzip,
    Xz,
    Zstd,
    Bzip2,
    Qcow2,
}

impl Format {
    /// What the image is, from its first bytes.
    pub fn sniff(head: &[u8], compressed: bool) -> Format {
        if head.starts_with(b"QFI\xfb") {
            return Format::Qcow2;
        }
        if !compressed {
            return Format::Raw;
        }
        if head.starts_with(&[0x1f, 0x8b]) {
            Format::Gzip
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Format::Xz
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Format::Zstd
        } else if head.starts_with(b"BZh") {
            Format::Bzip2
        } else {
            Format::Raw
        }
    }
}

pub fn run(context: &Context) -> ActionResult<Outcome> {
    let url = context.required("IMG_URL")?;
    let destination = context.required("DEST_DISK")?;
    let compressed = context.flag("COMPRESSED")?;
    let disk = OpenOptions::new()
        .write(true)
        .open(destination)
        .map_err(|err| fail(format!("opening {destination}: {err}")))?;
    let http = http_agent();
    let response = http
        .get(url)
        .call()
        .map_err(|err| fail(format!("fetching {url}: {err}")))?;
    let mut image = BufReader::with_capacity(1 << 20, response.into_body().into_reader());
    let head = image
        .fill_buf()
        .map_err(|err| fail(format!("reading {url}: {err}")))?;
    let format = Format::sniff(head, compressed);
    tracing::info!(url, destination, ?format, "writing image");
    let started = Instant::now();
    let written = match format {
        Format::Qcow2 => {
            drop(image);
            qcow2::write(&http, url, &disk, context)?
        }
        Format::Bzip2 => {
            return Err(fail(format!(
                "{url} is bzip2, which image2disk does not decompress; use gzip, xz or zstd"
            )))
        }
        Format::Raw => stream(&mut image, &disk, context)?,
        Format::Gzip => stream(
            &mut flate2::read::MultiGzDecoder::new(image),
            &disk,
            context,
        )?,
        Format::Zstd => {
            let mut decoder = ruzstd::decoding::StreamingDecoder::new(image)
                .map_err(|err| fail(format!("{url} is not valid zstd: {err}")))?;
            stream(&mut decoder, &disk, context)?
        }
        Format::Xz => {
            let mut writer = DiskWriter::new(&disk, context);
            lzma_rs::xz_decompress(&mut image, &mut writer).map_err(|err| match err {
                lzma_rs::error::Error::IoError(err) => io_error(err, "writing the image"),
                other => fail(format!("{url} is not valid xz: {other}")),
            })?;
            writer.finish()?
        }
    };
    disk.sync_all()
        .map_err(|err| fail(format!("flushing {destination}: {err}")))?;
    reread_partitions(&disk);
    let seconds = started.elapsed().as_secs_f64().max(0.001);
    Ok(Outcome::Done(format!(
        "wrote {written} bytes ({format:?}) to {destination} in {seconds:.1} s ({:.1} MiB/s)",
        written as f64 / seconds / f64::from(1 << 20)
    )))
}

fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_recv_body(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// A write that ran past the deadline comes back as this error.
fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the action's timeout passed")
}

fn io_error(err: io::Error, doing: &str) -> ActionError {
    if err.kind() == io::ErrorKind::TimedOut && err.to_string().contains("action's timeout") {
        ActionError::TimedOut
    } else {
        fail(format!("{doing}: {err}"))
    }
}

/// Writes sequentially to the disk through a large buffer, checking the deadline.
struct DiskWriter<'a> {
    disk: &'a File,
    buffer: Vec<u8>,
    offset: u64,
    context: &'a Context,
}

impl<'a> DiskWriter<'a> {
    fn new(disk: &'a File, context: &'a Context) -> DiskWriter<'a> {
        DiskWriter {
            disk,
            buffer: Vec::with_capacity(WRITE_BUFFER),
            offset: 0,
            context,
        }
    }

    fn finish(mut self) -> ActionResult<u64> {
        self.flush()
            .map_err(|err| io_error(err, "writing the image"))?;
        Ok(self.offset)
    }
}

impl Write for DiskWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let room = WRITE_BUFFER - self.buffer.len();
        let taken = bytes.len().min(room);
        self.buffer.extend_from_slice(&bytes[..taken]);
        if self.buffer.len() == WRITE_BUFFER {
            self.flush()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.context.check_deadline().is_err() {
            return Err(timed_out());
        }
        self.disk.write_all_at(&self.buffer, self.offset)?;
        self.offset += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }
}

fn stream(image: &mut impl Read, disk: &File, context: &Context) -> ActionResult<u64> {
    let mut writer = DiskWriter::new(disk, context);
    io::copy(image, &mut writer).map_err(|err| io_error(err, "streaming the image"))?;
    writer.finish()
}

/// Asks the kernel to read the new partition table, so that the next actions find
/// `/dev/nvme0n1p1` and the like. Meaningless (and skipped) for a regular file.
fn reread_partitions(disk: &File) {
    nix::ioctl_none!(blkrrpart, 0x12, 95);
    let is_block_device = disk
        .metadata()
        .map(|meta| std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type()))
        .unwrap_or(false);
    if is_block_device {
        // SAFETY: BLKRRPART takes no argument; the descriptor is open.
        if let Err(err) = unsafe { blkrrpart(std::os::fd::AsRawFd::as_raw_fd(disk)) } {
            tracing::warn!("re-reading the partition table: {err}");
        }
    }
}

mod qcow2 {
    //! qcow2 (versions 2 and 3) without backing files or encryption: the header, the L1 and
    //! L2 tables, and standard and deflate-compressed clusters.
    use std::{fs::File, io::Read, os::unix::fs::FileExt};

    use super::{fail, ActionResult, Context};

    const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
    const COMPRESSED: u64 = 1 << 62;
    const ZERO: u64 = 1;
    /// Contiguous clusters are fetched together, up to this many bytes a request.
    const MAX_RUN: u64 = 4 << 20;

    struct Image<'a> {
        http: &'a ureq::Agent,
        url: &'a str,
    }

    impl Image<'_> {
        fn read(&self, offset: u64, length: u64) -> ActionResult<Vec<u8>> {
            let response = self
                .http
                .get(self.url)
                .header("Range", format!("bytes={offset}-{}", offset + length - 1))
                .call()
                .map_err(|err| fail(format!("fetching {}: {err}", self.url)))?;
            if response.status() != 206 {
                return Err(fail(format!(
                    "{} answered a Range request with {}; qcow2 images need Range support",
                    self.url,
                    response.status()
                )));
            }
            let mut bytes = Vec::with_capacity(length as usize);
            response
                .into_body()
                .into_reader()
                .take(length)
                .read_to_end(&mut bytes)
                .map_err(|err| fail(format!("reading {}: {err}", self.url)))?;
            if bytes.len() as u64 != length {
                return Err(fail(format!("{} ends inside its own tables", self.url)));
            }
            Ok(bytes)
        }
    }

    fn be64(bytes: &[u8], at: usize) -> u64 {
        u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
    }

    fn be32(bytes: &[u8], at: usize) -> u32 {
        u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
    }

    /// Writes the image's allocated clusters at their places on the disk; returns the virtual
    /// size. Unallocated and zero clusters are left as the disk has them.
    pub fn write(
        http: &ureq::Agent,
        url: &str,
        disk: &File,
        context: &Context,
    ) -> ActionResult<u64> {
        let image = Image { http, url };
        let header = image.read(0, 104)?;
        let version = be32(&header, 4);
        if !(2..=3).contains(&version) {
            return Err(fail(format!(
                "{url}: qcow2 version {version} is not supported"
            )));
        }
        if be64(&header, 8) != 0 {
            return Err(fail(format!(
                "{url}: qcow2 images with a backing file are not supported"
            )));
        }
        if be32(&header, 32) != 0 {
            return Err(fail(format!(
                "{url}: encrypted qcow2 images are not supported"
            )));
        }
        if version == 3 && be64(&header, 72) & !1 != 0 {
            return Err(fail(format!(
                "{url}: the qcow2 image uses incompatible features ({:#x})",
                be64(&header, 72)
            )));
        }
        let cluster_bits = be32(&header, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(fail(format!(
                "{url}: cluster_bits {cluster_bits} is out of range"
            )));
        }
        let cluster = 1u64 << cluster_bits;
        let size = be64(&header, 24);
        let l1_entries = u64::from(be32(&header, 36));
        let l1 = image.read(be64(&header, 40), l1_entries * 8)?;
        let per_l2 = cluster / 8;
        // Pending run of contiguous clusters: (guest offset, host offset, length).
        let mut run: Option<(u64, u64, u64)> = None;
        let flush = |run: &mut Option<(u64, u64, u64)>| -> ActionResult<()> {
            if let Some((guest, host, length)) = run.take() {
                context.check_deadline()?;
                let data = image.read(host, length)?;
                disk.write_all_at(&data, guest)
                    .map_err(|err| fail(format!("writing at {guest}: {err}")))?;
            }
            Ok(())
        };
        for l1_index in 0..l1_entries {
            let l2_offset = be64(&l1, l1_index as usize * 8) & OFFSET_MASK;
            if l2_offset == 0 {
                continue;
            }
            let l2 = image.read(l2_offset, cluster)?;
            for l2_index in 0..per_l2 {
                let guest = (l1_index * per_l2 + l2_index) * cluster;
                if guest >= size {
                    break;
                }
                let entry = be64(&l2, l2_index as usize * 8);
                if entry & COMPRESSED != 0 {
                    flush(&mut run)?;
                    let shift = 62 - (cluster_bits - 8);
                    let host = entry & ((1 << shift) - 1);
                    let sectors = ((entry >> shift) & ((1 << (cluster_bits - 8)) - 1)) + 1;
                    let length = (sectors * 512 - (host & 511)).min(cluster * 2);
                    let compressed = image.read(host, length)?;
                    let mut data = Vec::with_capacity(cluster as usize);
                    flate2::read::DeflateDecoder::new(compressed.as_slice())
                        .take(cluster)
                        .read_to_end(&mut data)
                        .map_err(|err| {
                            fail(format!("{url}: a compressed cluster is corrupt: {err}"))
                        })?;
                    disk.write_all_at(&data, guest)
                        .map_err(|err| fail(format!("writing at {guest}: {err}")))?;
                    continue;
                }
                let host = entry & OFFSET_MASK;
                if host == 0 || entry & ZERO != 0 {
                    flush(&mut run)?;
                    continue;
                }
                let length = cluster.min(size - guest);
                match &mut run {
                    Some((run_guest, run_host, run_length))
                        if *run_guest + *run_length == guest
                            && *run_host + *run_length == host
                            && *run_length + length <= MAX_RUN =>
                    {
                        *run_length += length;
                    }
                    _ => {
                        flush(&mut run)?;
                        run = Some((guest, host, length));
                    }
                }
            }
        }
        flush(&mut run)?;
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_read_from_the_first_bytes() {
        assert_eq!(Format::sniff(&[0x1f, 0x8b, 8], true), Format::Gzip);
        assert_eq!(Format::sniff(&[0x1f, 0x8b, 8], false), Format::Raw);
        assert_eq!(Format::sniff(b"\xfd7zXZ\0", true), Format::Xz);
        assert_eq!(Format::sniff(&[0x28, 0xb5, 0x2f, 0xfd], true), Format::Zstd);
        assert_eq!(Format::sniff(b"QFI\xfb\0\0\0\x03", false), Format::Qcow2);
        assert_eq!(Format::sniff(b"BZh9", true), Format::Bzip2);
        assert_eq!(Format::sniff(&[0; 512], true), Format::Raw);
    }
}
