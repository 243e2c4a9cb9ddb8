//! `image2disk`: streams an OS image over HTTP onto a block device.
//! Environment: IMG_URL, DEST_DISK, COMPRESSED.
//!
//! The format is read from the image's first bytes rather than its name: raw, or with
//! `COMPRESSED=true` gzip, xz or zstd; qcow2 is recognised either way. A raw or compressed image
//! is one sequential stream, written as it arrives. A qcow2 image is not laid out in disk order,
//! so its clusters are fetched with HTTP Range requests, in the order of the disk.
use std::{
    fs::{File, OpenOptions},
    io::{self, BufRead, BufReader, Write},
    os::unix::fs::FileExt,
    time::{Duration, Instant},
};

use super::{fail, ActionError, ActionResult, Invocation, Succeeded};

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

pub fn run(invocation: &Invocation) -> ActionResult<Succeeded> {
    let url = invocation.required("IMG_URL")?;
    if url.starts_with("https://") {
        return Err(fail(format!(
            "IMG_URL {url}: image2disk in Wisp's provisioning OS speaks HTTP only (no TLS); \
             serve the image over http://"
        )));
    }
    let destination = invocation.required("DEST_DISK")?;
    let compressed = invocation.flag("COMPRESSED")?;
    let disk = OpenOptions::new()
        .write(true)
        .open(destination)
        .map_err(|err| fail(format!("opening {destination}: {err}")))?;
    let mut sources = sources(url, &invocation.appliances).into_iter().peekable();
    loop {
        let source = sources.next().unwrap_or_else(|| url.to_string());
        match write_from(invocation, &source, destination, compressed, &disk) {
            Err(ActionError::Failed(message)) if sources.peek().is_some() => {
                // The whole image again, from the start: the disk ends as the image, whatever
                // the broken stream wrote.
                tracing::warn!("{message}; fetching the image from the next appliance");
            }
            outcome => return outcome,
        }
    }
}

/// Where the image is fetched from: `url`, then, when it names one of the appliances sharing a
/// store (which serve the same files), the same path on each of the others.
fn sources(url: &str, appliances: &[String]) -> Vec<String> {
    let mut sources = vec![url.to_string()];
    let Some(rest) = url.strip_prefix("http://") else {
        return sources;
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host, format!(":{port}")),
        None => (authority, String::new()),
    };
    if appliances.iter().any(|appliance| appliance == host) {
        sources.extend(
            appliances
                .iter()
                .filter(|appliance| *appliance != host)
                .map(|appliance| format!("http://{appliance}{port}{path}")),
        );
    }
    sources
}

fn write_from(
    invocation: &Invocation,
    url: &str,
    destination: &str,
    compressed: bool,
    disk: &File,
) -> ActionResult<Succeeded> {
    let http = http_agent();
    let response = http
        .get(url)
        .call()
        .map_err(|err| fail(format!("fetching {url}: {err}")))?;
    let length = response.body().content_length();
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
            let image = qcow2::HttpImage { http: &http, url };
            qcow2::write(&image, disk, &|done, size| {
                invocation.output.progress(done, Some(size));
                invocation.check_deadline()
            })?
        }
        stream => {
            // A compressed image's length is not the disk's.
            let total = length.filter(|_| stream == Format::Raw);
            let mut writer = DiskWriter::new(disk, invocation, total);
            decompress(stream, url, &mut image, &mut writer)?;
            let written = writer.finish()?;
            // A server that died mid-stream ends a raw image early without a decoder to
            // notice: its length says so.
            if let Some(length) = length.filter(|&length| stream == Format::Raw && written < length)
            {
                return Err(fail(format!(
                    "{url} ended after {written} of its {length} bytes"
                )));
            }
            written
        }
    };
    disk.sync_all()
        .map_err(|err| fail(format!("flushing {destination}: {err}")))?;
    reread_partitions(disk);
    let seconds = started.elapsed().as_secs_f64().max(0.001);
    Ok(Succeeded::Done(format!(
        "wrote {written} bytes ({format:?}) to {destination} in {seconds:.1} s ({:.1} MiB/s)",
        written as f64 / seconds / f64::from(1 << 20)
    )))
}

fn http_agent() -> ureq::Agent {
    // Per read, not for the whole body: a large image takes as long as it takes, but a
    // server that stalls for a minute is given up on.
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_per_read(Some(Duration::from_secs(60)))
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

/// Writes sequentially to the disk through a large buffer, checking the deadline and saying
/// how far it is.
struct DiskWriter<'a> {
    disk: &'a File,
    buffer: Vec<u8>,
    offset: u64,
    /// The bytes there are to write, when known.
    total: Option<u64>,
    invocation: &'a Invocation,
}

impl<'a> DiskWriter<'a> {
    fn new(disk: &'a File, invocation: &'a Invocation, total: Option<u64>) -> DiskWriter<'a> {
        DiskWriter {
            disk,
            buffer: Vec::with_capacity(WRITE_BUFFER),
            offset: 0,
            total,
            invocation,
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
        if self.invocation.check_deadline().is_err() {
            return Err(timed_out());
        }
        self.disk.write_all_at(&self.buffer, self.offset)?;
        self.offset += self.buffer.len() as u64;
        self.buffer.clear();
        self.invocation.output.progress(self.offset, self.total);
        Ok(())
    }
}

/// Streams an image that is one sequential stream (raw, or compressed) into `out`.
///
/// A decoder that panics on a corrupt image (lzma-rs overflows on some xz indexes: fuzzing
/// found it) fails the action with a clear error instead of taking the worker down.
fn decompress(
    format: Format,
    url: &str,
    image: &mut impl BufRead,
    out: &mut impl Write,
) -> ActionResult<()> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        decompress_unguarded(format, url, image, out)
    }))
    .unwrap_or_else(|_| {
        Err(fail(format!(
            "{url} is not valid {format:?}: its decoder failed on it"
        )))
    })
}

fn decompress_unguarded(
    format: Format,
    url: &str,
    image: &mut impl BufRead,
    out: &mut impl Write,
) -> ActionResult<()> {
    match format {
        Format::Raw => {
            io::copy(image, out).map_err(|err| io_error(err, "streaming the image"))?;
        }
        Format::Gzip => {
            io::copy(&mut flate2::read::MultiGzDecoder::new(image), out)
                .map_err(|err| io_error(err, "streaming the image"))?;
        }
        Format::Zstd => {
            // A zstd file may hold several frames (pzstd, or files joined with cat); the
            // decoder reads one, so go on until the input ends.
            loop {
                let mut frame = ruzstd::decoding::StreamingDecoder::new(&mut *image)
                    .map_err(|err| fail(format!("{url} is not valid zstd: {err}")))?;
                io::copy(&mut frame, out).map_err(|err| io_error(err, "streaming the image"))?;
                let more = image
                    .fill_buf()
                    .map_err(|err| fail(format!("reading {url}: {err}")))?;
                if more.is_empty() {
                    break;
                }
            }
        }
        Format::Xz => {
            lzma_rs::xz_decompress(image, out).map_err(|err| match err {
                lzma_rs::error::Error::IoError(err) => io_error(err, "writing the image"),
                other => fail(format!("{url} is not valid xz: {other}")),
            })?;
        }
        Format::Bzip2 => {
            return Err(fail(format!(
                "{url} is bzip2, which image2disk does not decompress; use gzip, xz or zstd"
            )))
        }
        Format::Qcow2 => {
            return Err(fail(format!(
                "{url} is qcow2, which is read with Range requests, not as a stream"
            )))
        }
    }
    Ok(())
}

/// Format detection and every decoder, over an image held in memory, for the fuzz target
/// (tests/fuzz): whatever the bytes, an error and never a panic or a hang.
#[cfg(fuzzing)]
pub fn fuzz_image(bytes: &[u8]) {
    let compressed = bytes.first().is_some_and(|flags| flags & 1 == 1);
    let image = bytes.get(1..).unwrap_or_default();
    match Format::sniff(image, compressed) {
        Format::Qcow2 => {
            let _ = qcow2::write(&image, &qcow2::Discard, &|_, _| Ok(()));
        }
        stream => {
            let _ = decompress(stream, "fuzz", &mut &*image, &mut io::sink());
        }
    }
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
    //! L2 tables, and standard and deflate-compressed clusters. Clusters the image does not
    //! hold (unallocated, or marked zero) read as zeros, so they are zeroed on the disk too:
    //! a used disk must not keep stale signatures where the image has none.
    use std::{fs::File, io::Read, os::unix::fs::FileExt};

    use super::{fail, ActionResult};

    const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
    const COMPRESSED: u64 = 1 << 62;
    const ZERO: u64 = 1;
    /// Contiguous clusters are fetched (or zeroed) together, up to this many bytes at once.
    const MAX_RUN: u64 = 4 << 20;
    /// qcow2's own limit on the virtual size.
    const MAX_SIZE: u64 = 1 << 56;

    /// Where the image's bytes come from, at any offset.
    pub trait Image {
        /// The image's name in messages.
        fn name(&self) -> &str;
        /// Exactly `length` bytes from `offset`, or an error.
        fn read(&self, offset: u64, length: u64) -> ActionResult<Vec<u8>>;
    }

    /// Where the disk's bytes go.
    pub trait Disk {
        fn write_all_at(&self, data: &[u8], offset: u64) -> std::io::Result<()>;
    }

    impl Disk for File {
        fn write_all_at(&self, data: &[u8], offset: u64) -> std::io::Result<()> {
            FileExt::write_all_at(self, data, offset)
        }
    }

    /// A disk that keeps nothing, for the fuzz target.
    #[cfg(fuzzing)]
    pub struct Discard;

    #[cfg(fuzzing)]
    impl Disk for Discard {
        fn write_all_at(&self, _: &[u8], _: u64) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// An image held in memory, for the fuzz target.
    #[cfg(fuzzing)]
    impl Image for &[u8] {
        fn name(&self) -> &str {
            "fuzz"
        }

        fn read(&self, offset: u64, length: u64) -> ActionResult<Vec<u8>> {
            let start = usize::try_from(offset).ok();
            let end = start
                .zip(usize::try_from(length).ok())
                .and_then(|(s, l)| s.checked_add(l));
            match start.zip(end).and_then(|(start, end)| self.get(start..end)) {
                Some(bytes) => Ok(bytes.to_vec()),
                None => Err(fail("fuzz ends inside its own tables".to_string())),
            }
        }
    }

    /// The image on an HTTP server that answers Range requests.
    pub struct HttpImage<'a> {
        pub http: &'a ureq::Agent,
        pub url: &'a str,
    }

    impl Image for HttpImage<'_> {
        fn name(&self) -> &str {
            self.url
        }

        fn read(&self, offset: u64, length: u64) -> ActionResult<Vec<u8>> {
            if length == 0 {
                return Ok(Vec::new());
            }
            let last = offset
                .checked_add(length - 1)
                .ok_or_else(|| fail(format!("{}: an offset is out of range", self.url)))?;
            let response = self
                .http
                .get(self.url)
                .header("Range", format!("bytes={offset}-{last}"))
                .call()
                .map_err(|err| fail(format!("fetching {}: {err}", self.url)))?;
            if response.status() != 206 {
                return Err(fail(format!(
                    "{} answered a Range request with {}; qcow2 images need Range support",
                    self.url,
                    response.status()
                )));
            }
            let mut bytes = Vec::new();
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

    /// What a stretch of the disk gets: clusters fetched from the image, or zeros.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Source {
        Image(u64),
        Zeros,
    }

    /// A run of contiguous clusters with contiguous sources, written in one go.
    struct Run {
        guest: u64,
        source: Source,
        length: u64,
    }

    struct Writer<'a, I, D> {
        image: &'a I,
        disk: &'a D,
        /// Called before each write, with how far the disk is written and its size.
        checkpoint: &'a dyn Fn(u64, u64) -> ActionResult<()>,
        size: u64,
        run: Option<Run>,
    }

    impl<I: Image, D: Disk> Writer<'_, I, D> {
        fn add(&mut self, guest: u64, source: Source, length: u64) -> ActionResult<()> {
            if let Some(run) = &mut self.run {
                let follows = match (run.source, source) {
                    (Source::Image(start), Source::Image(host)) => start + run.length == host,
                    (Source::Zeros, Source::Zeros) => true,
                    _ => false,
                };
                if follows && run.guest + run.length == guest && run.length + length <= MAX_RUN {
                    run.length += length;
                    return Ok(());
                }
            }
            self.flush()?;
            self.run = Some(Run {
                guest,
                source,
                length,
            });
            Ok(())
        }

        fn flush(&mut self) -> ActionResult<()> {
            let Some(run) = self.run.take() else {
                return Ok(());
            };
            (self.checkpoint)(run.guest, self.size)?;
            let data = match run.source {
                Source::Image(host) => self.image.read(host, run.length)?,
                Source::Zeros => vec![0; run.length as usize],
            };
            self.write(run.guest, &data)
        }

        fn write(&self, guest: u64, data: &[u8]) -> ActionResult<()> {
            self.disk
                .write_all_at(data, guest)
                .map_err(|err| fail(format!("writing at {guest}: {err}")))
        }
    }

    /// Writes the image onto the disk cluster by cluster, calling `checkpoint` before each
    /// write (with how far it is and the virtual size, which it returns).
    pub fn write(
        image: &impl Image,
        disk: &impl Disk,
        checkpoint: &dyn Fn(u64, u64) -> ActionResult<()>,
    ) -> ActionResult<u64> {
        let url = image.name();
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
        // Bit 0 (dirty refcounts) does not matter to a reader; the others (corrupt, an external
        // data file, zstd compression) do.
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
        if size > MAX_SIZE {
            return Err(fail(format!(
                "{url}: the virtual size {size} is out of range"
            )));
        }
        let per_l2 = cluster / 8;
        // Only the L1 entries that cover the virtual size are read (the header's count is not
        // trusted to size an allocation).
        let needed = size.div_ceil(cluster * per_l2);
        if u64::from(be32(&header, 36)) < needed {
            return Err(fail(format!(
                "{url}: the L1 table is too small for the virtual size"
            )));
        }
        let l1 = image.read(be64(&header, 40), needed * 8)?;
        let mut writer = Writer {
            image,
            disk,
            checkpoint,
            size,
            run: None,
        };
        for l1_index in 0..needed {
            let first = l1_index * per_l2 * cluster;
            let covered = (per_l2 * cluster).min(size - first);
            let l2_offset = be64(&l1, l1_index as usize * 8) & OFFSET_MASK;
            if l2_offset == 0 {
                writer.add(first, Source::Zeros, covered)?;
                continue;
            }
            let l2 = writer.image.read(l2_offset, cluster)?;
            for l2_index in 0..covered.div_ceil(cluster) {
                let guest = first + l2_index * cluster;
                let length = cluster.min(size - guest);
                let entry = be64(&l2, l2_index as usize * 8);
                if entry & COMPRESSED != 0 {
                    writer.flush()?;
                    checkpoint(guest, size)?;
                    let shift = 62 - (cluster_bits - 8);
                    let host = entry & ((1 << shift) - 1);
                    let sectors = ((entry >> shift) & ((1 << (cluster_bits - 8)) - 1)) + 1;
                    let stored = (sectors * 512 - (host & 511)).min(cluster * 2);
                    let compressed = writer.image.read(host, stored)?;
                    let mut data = Vec::with_capacity(length as usize);
                    flate2::read::DeflateDecoder::new(compressed.as_slice())
                        .take(length)
                        .read_to_end(&mut data)
                        .map_err(|err| {
                            fail(format!("{url}: a compressed cluster is corrupt: {err}"))
                        })?;
                    data.resize(length as usize, 0);
                    writer.write(guest, &data)?;
                    continue;
                }
                let host = entry & OFFSET_MASK;
                let source = if host == 0 || entry & ZERO != 0 {
                    Source::Zeros
                } else {
                    Source::Image(host)
                };
                writer.add(guest, source, length)?;
            }
        }
        writer.flush()?;
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_image_on_an_appliance_is_fetched_from_the_others_next() {
        let appliances = ["10.0.0.1".to_string(), "10.0.0.2".to_string()];
        assert_eq!(
            super::sources("http://10.0.0.1:8080/images/debian.raw.zst", &appliances),
            [
                "http://10.0.0.1:8080/images/debian.raw.zst",
                "http://10.0.0.2:8080/images/debian.raw.zst"
            ]
        );
        // Elsewhere, only where it is.
        assert_eq!(
            super::sources("http://mirror.example/debian.raw", &appliances),
            ["http://mirror.example/debian.raw"]
        );
    }

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

    #[test]
    fn a_decoder_that_panics_on_a_corrupt_image_fails_the_action_instead() {
        // Found by the image_format fuzz target: lzma-rs overflows on this xz index (a panic
        // where overflow checks are on). The file's first byte is the target's flags.
        let found = include_bytes!(
            "../../../../tests/fuzz/regressions/image_format/xz-index-size-overflows-in-lzma-rs"
        );
        let image = &found[1..];
        assert_eq!(Format::sniff(image, true), Format::Xz);
        let err = decompress(Format::Xz, "corrupt.xz", &mut &image[..], &mut io::sink())
            .expect_err("a corrupt image fails");
        assert!(err.to_string().contains("corrupt.xz is not valid"), "{err}");
    }
}
