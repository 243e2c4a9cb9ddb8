//! The boot HTTP listener, with a fast path for the boot assets: a GET or HEAD of a file under
//! `/assets/` is answered with sendfile(2), from the page cache straight into the socket, as
//! nginx does. A rack's machines fetch the same large initramfs at once; copying it through
//! userspace buffers costs a copy per byte and buffers per connection (docs/benchmarks).
//!
//! Every other request, and anything the fast path does not fully understand (conditionals,
//! multiple ranges, unsatisfiable ranges, HTTP/1.0, HTTP/2, bodies, odd paths, missing files),
//! goes with its connection to the axum router, whose `ServeDir` gives the complete answer. So
//! the fast path only has to be right for the common case, and declines the rest.
use std::{
    io::{self, Cursor},
    net::SocketAddr,
    os::fd::AsFd,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use nix::{
    errno::Errno,
    fcntl::{open, openat2, OFlag, OpenHow, ResolveFlag},
    sys::stat::Mode,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _, Chain, Interest, Join},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpListener, TcpStream,
    },
    sync::mpsc,
};

use crate::{
    metrics::Metrics,
    net::{ConnectionLimits, ConnectionSlots, PaceLimits, Paced},
};

/// A request head larger than this is not an asset fetch; the router answers it.
const MAX_HEAD: usize = 16 << 10;
/// The most one sendfile(2) call is asked to move. Asked for the whole file (it moves at most
/// about 2 GiB a call), a call runs on as long as the socket takes more: against 2 MiB a call,
/// as nginx's `sendfile_max_chunk`, that was 10–25% slower in the HTTP benchmark.
const SENDFILE_CHUNK: u64 = 2 << 20;
/// Connections handed to the router but not yet taken by it.
const HANDOVER_QUEUE: usize = 1024;
/// Boot HTTP connections at once. Each costs a task and a descriptor, and anyone on the boot
/// network can open them: beyond this a new connection is closed at once.
const MAX_CONNECTIONS: usize = 16_384;
/// Connections from one address at once, unless configured: a machine needs a few; one host
/// cannot take them all.
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 64;

/// A connection's halves joined again, with the bytes the fast path read put back in front.
type Rejoined = Join<Chain<Cursor<Vec<u8>>, OwnedReadHalf>, OwnedWriteHalf>;

/// A connection as the router gets it: the bytes already read from it come first, it is closed
/// when idle or read too slowly, and it holds its connection slots until it closes.
pub struct RouterIo {
    io: Paced<Rejoined>,
    _slots: ConnectionSlots,
}

impl tokio::io::AsyncRead for RouterIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for RouterIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The listener axum serves: it yields the connections the fast path hands over.
pub struct AssetListener {
    handed_over: mpsc::Receiver<(RouterIo, SocketAddr)>,
    local: SocketAddr,
}

impl AssetListener {
    /// Starts accepting on `listener`, at most `per_address` connections from one address;
    /// assets are served from `assets_dir`.
    pub fn start(
        listener: TcpListener,
        assets_dir: PathBuf,
        (pace, per_address): (PaceLimits, usize),
        metrics: Arc<Metrics>,
    ) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let (handover, handed_over) = mpsc::channel(HANDOVER_QUEUE);
        let assets = Arc::new(Assets {
            dir: assets_dir,
            pace,
            metrics,
            handover,
        });
        tokio::spawn(accept_loop(listener, assets, per_address));
        Ok(Self { handed_over, local })
    }
}

impl axum::serve::Listener for AssetListener {
    type Io = RouterIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.handed_over.recv().await {
            Some(connection) => connection,
            // The accept loop never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

struct Assets {
    dir: PathBuf,
    pace: PaceLimits,
    metrics: Arc<Metrics>,
    handover: mpsc::Sender<(RouterIo, SocketAddr)>,
}

async fn accept_loop(listener: TcpListener, assets: Arc<Assets>, per_address: usize) {
    let limits = ConnectionLimits::new(MAX_CONNECTIONS, per_address);
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                // Beyond the limits the connection is closed at once (dropped): the client
                // sees it end, and retries.
                let slots = match limits.admit(peer) {
                    Ok(slots) => slots,
                    Err(why) => {
                        tracing::debug!(%peer, "boot HTTP connection refused: {why}");
                        continue;
                    }
                };
                // As nginx's tcp_nodelay: a response's last segment is not held back.
                let _ = stream.set_nodelay(true);
                tokio::spawn(Arc::clone(&assets).connection(stream, peer, slots));
            }
            // Out of file descriptors, most likely: wait for connections to close rather than
            // spin (hyper and axum do the same).
            Err(err) if !is_connection_error(&err) => {
                tracing::error!("boot HTTP cannot accept a connection: {err}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(_) => {}
        }
    }
}

fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

impl Assets {
    /// Serves asset requests on the connection until it closes or asks for something else.
    async fn connection(
        self: Arc<Self>,
        mut stream: TcpStream,
        peer: SocketAddr,
        slots: ConnectionSlots,
    ) {
        let mut buffer = Vec::with_capacity(4096);
        loop {
            // A whole head within the idle time: a head sent a byte at a time is cut off too.
            let head = tokio::time::timeout(self.pace.idle, read_head(&mut stream, &mut buffer));
            let (request, head_length) = match head.await {
                Ok(Ok(Some(Head::Asset(request, head_length)))) => (request, head_length),
                Ok(Ok(Some(_))) => return self.hand_over(stream, buffer, peer, slots).await,
                Ok(Ok(None)) | Err(_) => return,
                Ok(Err(err)) => {
                    return tracing::debug!(%peer, "boot HTTP connection failed: {err}");
                }
            };
            let Some(file) = self.open(&request) else {
                return self.hand_over(stream, buffer, peer, slots).await;
            };
            let response = match respond(&request, &file) {
                Some(response) => response,
                None => return self.hand_over(stream, buffer, peer, slots).await,
            };
            buffer.drain(..head_length);
            self.count(response.status);
            if let Err(err) = send(&mut stream, &response, &file.file, self.pace).await {
                if err.kind() == io::ErrorKind::TimedOut {
                    crate::net::reset_on_close(&stream);
                }
                return tracing::debug!(%peer, path = %request.path, "asset transfer ended: {err}");
            }
            if !request.keep_alive {
                return;
            }
        }
    }

    async fn hand_over(
        &self,
        stream: TcpStream,
        read: Vec<u8>,
        peer: SocketAddr,
        slots: ConnectionSlots,
    ) {
        let Ok(socket) = stream.as_fd().try_clone_to_owned() else {
            return tracing::warn!(%peer, "boot HTTP connection dropped: out of descriptors");
        };
        let (reader, writer) = stream.into_split();
        let io = RouterIo {
            io: Paced::new(
                tokio::io::join(Cursor::new(read).chain(reader), writer),
                socket,
                self.pace,
            ),
            _slots: slots,
        };
        // Fails only when the server is shutting down, which closes the connection anyway.
        let _ = self.handover.send((io, peer)).await;
    }

    /// The requested file, if it is a regular file inside the assets directory.
    fn open(&self, request: &AssetRequest) -> Option<OpenFile> {
        let file = open_beneath(&self.dir, &request.relative).ok()?;
        let metadata = file.metadata().ok()?;
        metadata.is_file().then(|| OpenFile {
            content_type: mime_guess::from_path(&request.relative)
                .first_raw()
                .unwrap_or("application/octet-stream"),
            length: metadata.len(),
            modified: metadata.modified().ok(),
            file,
        })
    }

    fn count(&self, status: u16) {
        crate::http::count_request(&self.metrics, "/assets", status);
    }
}

/// Reads until the buffer holds a whole request head, or what the router must answer; None when
/// the peer closed first.
async fn read_head(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> io::Result<Option<Head>> {
    loop {
        match parse(buffer) {
            Head::Incomplete if buffer.len() >= MAX_HEAD => return Ok(Some(Head::Router)),
            Head::Incomplete => {}
            head => return Ok(Some(head)),
        }
        if stream.read_buf(buffer).await? == 0 {
            return Ok(None);
        }
    }
}

/// What the bytes read so far on a connection hold.
#[derive(Debug, PartialEq)]
enum Head {
    Incomplete,
    /// An asset request the fast path answers, and the length of its head.
    Asset(AssetRequest, usize),
    /// Anything else: the router answers it (or rejects it).
    Router,
}

/// An asset request the fast path can answer in full.
#[derive(Debug, PartialEq)]
struct AssetRequest {
    /// The URL path, for logs.
    path: String,
    /// The decoded path below `/assets/`.
    relative: PathBuf,
    head_only: bool,
    range: Option<String>,
    keep_alive: bool,
}

fn parse(buffer: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buffer) {
        Ok(httparse::Status::Partial) => Head::Incomplete,
        Ok(httparse::Status::Complete(head_length)) => match asset_request(&request) {
            Some(asset) => Head::Asset(asset, head_length),
            None => Head::Router,
        },
        Err(_) => Head::Router,
    }
}

/// The asset request in a complete head; None for anything the router should answer.
fn asset_request(request: &httparse::Request<'_, '_>) -> Option<AssetRequest> {
    let head_only = match request.method? {
        "GET" => false,
        "HEAD" => true,
        _ => return None,
    };
    // HTTP/1.0's keep-alive rules differ; the router handles that rarer client.
    if request.version? != 1 {
        return None;
    }
    let path = request.path?;
    let relative = asset_path(path.split('?').next()?)?;
    // HTTP/1.1 requires Host (RFC 9112 3.2): a request without one goes to the router, which
    // answers 400.
    if !request
        .headers
        .iter()
        .any(|header| header.name.eq_ignore_ascii_case("host"))
    {
        return None;
    }
    let mut range = None;
    let mut keep_alive = true;
    for header in request.headers.iter() {
        let value = std::str::from_utf8(header.value).ok()?;
        let name = header.name.to_ascii_lowercase();
        match name.as_str() {
            // Two Range headers have no defined meaning; the router decides.
            "range" if range.is_some() => return None,
            "range" => range = Some(value.to_string()),
            "connection" => {
                for token in value.split(',').map(str::trim) {
                    if token.eq_ignore_ascii_case("upgrade") {
                        return None;
                    }
                    keep_alive &= !token.eq_ignore_ascii_case("close");
                }
            }
            "content-length" if value.trim() != "0" => return None,
            "transfer-encoding" | "expect" => return None,
            conditional if conditional.starts_with("if-") => return None,
            _ => {}
        }
    }
    Some(AssetRequest {
        path: path.to_string(),
        relative,
        head_only,
        range,
        keep_alive,
    })
}

/// Opens `relative` for reading beneath `dir`, resolving symlinks only while they stay inside
/// it (openat2's RESOLVE_BENEATH): a symlink out of the assets directory, say to the data
/// directory's token key, fails with EXDEV instead of publishing what it points to.
fn open_beneath(dir: &Path, relative: &Path) -> nix::Result<std::fs::File> {
    let dir = open(
        dir,
        OFlag::O_DIRECTORY | OFlag::O_PATH | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let file = openat2(
        &dir,
        relative,
        OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS),
    )?;
    Ok(std::fs::File::from(file))
}

/// Whether the router may answer a request for `url_path` (`/assets/...`): only a plain path
/// to a file that opens beneath `dir`. The router's `ServeDir` follows symlinks and folds
/// `//`, `.` and a trailing `/` away, so anything else is refused here, failing closed: a
/// path `asset_path` does not take, a symlink out, and any error (a kernel without openat2
/// included) but a missing file, which `ServeDir` answers with its own 404.
pub fn may_serve(dir: &Path, url_path: &str) -> bool {
    let Some(relative) = asset_path(url_path) else {
        return false;
    };
    match open_beneath(dir, &relative) {
        Ok(_) | Err(Errno::ENOENT) => true,
        Err(_) => false,
    }
}

/// The decoded path of an asset below the assets directory; None unless every segment is a
/// plain name, so that no path can leave the directory.
fn asset_path(url_path: &str) -> Option<PathBuf> {
    let encoded = url_path.strip_prefix("/assets/")?;
    let decoded = percent_encoding::percent_decode_str(encoded)
        .decode_utf8()
        .ok()?;
    let mut relative = PathBuf::new();
    for segment in decoded.split('/') {
        let plain = !matches!(segment, "" | "." | "..") && !segment.contains(['\\', '\0']);
        if !plain {
            return None;
        }
        relative.push(segment);
    }
    Some(relative)
}

struct OpenFile {
    file: std::fs::File,
    length: u64,
    modified: Option<SystemTime>,
    content_type: &'static str,
}

/// What to send: the head, and which bytes of the file follow it.
#[cfg_attr(fuzzing, derive(Debug))]
struct Response {
    status: u16,
    head: String,
    offset: u64,
    body_length: u64,
}

/// The response to an asset request; None when the router must answer (several ranges, or a
/// range the file cannot satisfy, which ServeDir answers with 416).
fn respond(request: &AssetRequest, file: &OpenFile) -> Option<Response> {
    let (status, offset, body_length, content_range) = match &request.range {
        None => (200, 0, file.length, None),
        Some(range) => {
            let ranges = http_range_header::parse_range_header(range)
                .ok()?
                .validate(file.length)
                .ok()?;
            let [range] = ranges.as_slice() else {
                return None;
            };
            let (start, end) = (*range.start(), *range.end());
            // An empty file has no byte to satisfy a range with: the router answers 416.
            if start >= file.length || end >= file.length {
                return None;
            }
            let content_range = format!("bytes {start}-{end}/{}", file.length);
            (206, start, end - start + 1, Some(content_range))
        }
    };
    let mut head = format!(
        "HTTP/1.1 {}\r\ncontent-type: {}\r\naccept-ranges: bytes\r\ncontent-length: {body_length}\r\ndate: {}\r\n",
        if status == 200 { "200 OK" } else { "206 Partial Content" },
        file.content_type,
        httpdate::fmt_http_date(SystemTime::now()),
    );
    if let Some(modified) = file.modified {
        head += &format!("last-modified: {}\r\n", httpdate::fmt_http_date(modified));
    }
    if let Some(content_range) = content_range {
        head += &format!("content-range: {content_range}\r\n");
    }
    if !request.keep_alive {
        head += "connection: close\r\n";
    }
    head += "\r\n";
    Some(Response {
        status,
        head,
        offset,
        body_length: if request.head_only { 0 } else { body_length },
    })
}

/// Writes the head, then the body with sendfile(2), by the response's deadline: a client that
/// stops reading for the idle time, or reads slower than the minimum rate, is cut off.
async fn send(
    stream: &mut TcpStream,
    response: &Response,
    file: &std::fs::File,
    pace: PaceLimits,
) -> io::Result<()> {
    let deadline = pace.deadline(tokio::time::Instant::now(), response.body_length);
    tokio::time::timeout_at(deadline, send_body(stream, response, file, pace.idle))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read the response too slowly",
            )
        })?
}

async fn send_body(
    stream: &mut TcpStream,
    response: &Response,
    file: &std::fs::File,
    idle: Duration,
) -> io::Result<()> {
    // As nginx's tcp_nopush: corked, the head and the body leave in full segments, not in
    // whatever a wakeup finds room for; the last, partial one goes when the cork comes off.
    // Failing to cork costs speed only.
    let _ = socket2::SockRef::from(&*stream).set_tcp_cork(true);
    tokio::time::timeout(idle, stream.write_all(response.head.as_bytes()))
        .await
        .map_err(|_| stalled())??;
    let mut offset = i64::try_from(response.offset).map_err(io::Error::other)?;
    let mut remaining = response.body_length;
    while remaining > 0 {
        // At most SENDFILE_CHUNK per call, as nginx's sendfile_max_chunk.
        let count = remaining.min(SENDFILE_CHUNK) as usize;
        let sent = tokio::time::timeout(
            idle,
            stream.async_io(Interest::WRITABLE, || {
                nix::sys::sendfile::sendfile64(
                    stream.as_fd(),
                    file.as_fd(),
                    Some(&mut offset),
                    count,
                )
                .map_err(io::Error::from)
            }),
        )
        .await
        .map_err(|_| stalled())??;
        if sent == 0 {
            // The file shrank after its length was sent: the promised length cannot be kept,
            // so the connection is closed, and the client sees a short body.
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file was truncated during the transfer",
            ));
        }
        remaining -= sent as u64;
    }
    socket2::SockRef::from(&*stream).set_tcp_cork(false)
}

/// The request-head parser and the response it leads to, for the fuzz target (tests/fuzz):
/// whatever the bytes, no panic; an asset head lies within what was read, its path stays
/// beneath the directory, and its response promises only bytes the file has.
#[cfg(fuzzing)]
pub fn fuzz_head(buffer: &[u8], file_length: u64) {
    let Head::Asset(request, head_length) = parse(buffer) else {
        return;
    };
    assert!(
        head_length <= buffer.len(),
        "the head ends past the bytes read"
    );
    assert!(
        request
            .relative
            .components()
            .all(|part| matches!(part, std::path::Component::Normal(_))),
        "{:?} could leave the assets directory",
        request.relative
    );
    let file = OpenFile {
        file: std::fs::File::open("/dev/null").expect("/dev/null opens"),
        length: file_length,
        modified: None,
        content_type: "application/octet-stream",
    };
    if let Some(response) = respond(&request, &file) {
        assert!(
            response.offset + response.body_length <= file_length,
            "{response:?} is beyond a file of {file_length} bytes"
        );
    }
}

fn stalled() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(head: &str) -> Option<AssetRequest> {
        match parse(head.as_bytes()) {
            Head::Asset(request, length) => {
                assert_eq!(length, head.len());
                Some(request)
            }
            _ => None,
        }
    }

    #[test]
    fn plain_gets_and_heads_of_assets_take_the_fast_path() {
        let get = request("GET /assets/boot/vmlinuz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(get.relative, PathBuf::from("boot/vmlinuz"));
        assert!(!get.head_only && get.keep_alive && get.range.is_none());
        let head = request(
            "HEAD /assets/a%20b?x=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nRange: bytes=0-9\r\n\r\n",
        )
        .unwrap();
        assert_eq!(head.relative, PathBuf::from("a b"));
        assert!(head.head_only && !head.keep_alive);
        assert_eq!(head.range.as_deref(), Some("bytes=0-9"));
    }

    #[test]
    fn everything_else_goes_to_the_router() {
        for head in [
            "GET /ipxe/snponly.efi HTTP/1.1\r\nHost: x\r\n\r\n",
            "POST /assets/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n",
            "GET /assets/x HTTP/1.0\r\nHost: x\r\n\r\n",
            "GET /assets/../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /assets/%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /assets/a//b HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /assets/ HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /assets/x HTTP/1.1\r\nHost: x\r\nIf-Modified-Since: Wed, 21 Oct 2015 07:28:00 GMT\r\n\r\n",
            "GET /assets/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /assets/x HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\n\r\n",
            "GET /assets/x HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\nRange: bytes=2-3\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET /assets/x HTTP/1.1\r\n",
            // No Host: HTTP/1.1 requires one, and the router answers 400.
            "GET /assets/x HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(request(head), None, "{head:?}");
        }
    }

    fn file(length: u64) -> OpenFile {
        OpenFile {
            file: std::fs::File::open("/dev/null").unwrap(),
            length,
            modified: None,
            content_type: "application/octet-stream",
        }
    }

    #[test]
    fn ranges_are_answered_with_206_and_only_their_bytes() {
        let mut asset =
            request("GET /assets/x HTTP/1.1\r\nHost: x\r\nRange: bytes=1000-1999\r\n\r\n").unwrap();
        let response = respond(&asset, &file(1 << 20)).unwrap();
        assert_eq!(
            (response.status, response.offset, response.body_length),
            (206, 1000, 1000)
        );
        assert!(response
            .head
            .contains("content-range: bytes 1000-1999/1048576\r\n"));
        assert!(response.head.contains("content-length: 1000\r\n"));

        asset.range = Some("bytes=-10".into());
        let response = respond(&asset, &file(100)).unwrap();
        assert_eq!((response.offset, response.body_length), (90, 10));

        // Several ranges, or none the file can satisfy: the router's ServeDir answers.
        for range in ["bytes=0-1,5-6", "bytes=200-300", "lines=1-2"] {
            asset.range = Some(range.into());
            assert!(respond(&asset, &file(100)).is_none(), "{range}");
        }
        asset.range = Some("bytes=0-".into());
        assert!(
            respond(&asset, &file(0)).is_none(),
            "an empty file has no bytes to range over"
        );
    }

    #[test]
    fn heads_promise_the_length_but_send_no_body() {
        let head = request("HEAD /assets/x HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let response = respond(&head, &file(4096)).unwrap();
        assert_eq!((response.status, response.body_length), (200, 0));
        assert!(response.head.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(response.head.contains("content-length: 4096\r\n"));
        assert!(response.head.ends_with("\r\n\r\n"));
    }
}
