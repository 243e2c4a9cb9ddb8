//! The boot HTTP server on the served interface: per-machine iPXE scripts, the iPXE binaries
//! for UEFI HTTP boot, and the boot assets (kernel, initramfs, images) with HEAD and Range.
//! It is separate from the API, which stays on loopback: machines on the boot network must not
//! be able to change resources.
pub mod assets;
pub mod script;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::Arc,
};

use anyhow::Context as _;
use axum::{
    extract::{ConnectInfo, MatchedPath, Path, Request, State},
    http::{header, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use tower_http::services::ServeDir;
use workflow::resource::MacAddr;

use crate::{
    boot_files::BootFiles,
    events::EventKind,
    log_budget::LogBudget,
    metadata::{self, Metadata},
    metrics::{HttpLabels, Metrics},
    net::PaceLimits,
    state::AppState,
};
use assets::AssetListener;
use axum::serve::Listener as _;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use script::ScriptContext;
use tower::ServiceExt as _;

/// Where the boot HTTP server listens and what it serves from.
pub struct BootHttpConfig {
    /// Wisp's address on the boot network.
    pub server: Ipv4Addr,
    pub port: u16,
    /// The worker API's port, which the script gives the provisioning OS.
    pub worker_api_port: u16,
    pub assets_dir: PathBuf,
    /// How long a client may leave its connection idle, and how fast it must read.
    pub pace: PaceLimits,
    /// Connections from one client address at once.
    pub max_per_client: usize,
}

pub struct BootHttp {
    config: BootHttpConfig,
    /// Lines about each client address, rationed: anyone may ask for scripts.
    log: LogBudget<IpAddr>,
    state: Arc<AppState>,
    boot_files: Arc<BootFiles>,
}

impl BootHttp {
    pub fn new(
        config: BootHttpConfig,
        state: Arc<AppState>,
        boot_files: Arc<BootFiles>,
    ) -> BootHttp {
        BootHttp {
            config,
            log: LogBudget::new("http", &state.metrics.log_lines_suppressed),
            state,
            boot_files,
        }
    }

    fn assets_base(&self) -> String {
        format!("http://{}:{}/assets", self.config.server, self.config.port)
    }

    pub async fn serve(self) -> anyhow::Result<()> {
        let address = SocketAddr::from((self.config.server, self.config.port));
        // Plain asset fetches are sent by the listener's sendfile fast path; ServeDir answers
        // the rest (conditionals, several ranges, errors), reading 128 KiB chunks on the
        // blocking pool (its default is 64 KiB).
        let assets = ServeDir::new(&self.config.assets_dir).with_buf_chunk_size(128 << 10);
        let boot = Arc::new(self);
        let metadata = metadata::router(Arc::new(Metadata {
            state: Arc::clone(&boot.state),
        }));
        let router = Router::new()
            .route("/ipxe/{mac}/auto.ipxe", get(machine_script))
            .route("/ipxe/{file}", get(boot_binary))
            .nest_service("/assets", assets)
            .with_state(Arc::clone(&boot))
            .merge(metadata)
            .layer(middleware::from_fn_with_state(
                Arc::clone(&boot),
                assets_beneath_only,
            ))
            .layer(middleware::from_fn(host_required))
            .layer(middleware::from_fn_with_state(
                Arc::clone(&boot),
                count_requests,
            ));
        let listener = crate::net::listen_tcp(address)
            .with_context(|| format!("binding boot HTTP to {address}"))?;
        let mut listener = AssetListener::start(
            listener,
            boot.config.assets_dir.clone(),
            (boot.config.pace, boot.config.max_per_client),
            Arc::clone(&boot.state.metrics),
        )?;
        tracing::info!(%address, assets = %boot.config.assets_dir.display(), "boot HTTP listening");
        // As axum::serve does, with hyper given a timer, without which it enforces no
        // header-read timeout: a head sent a byte at a time would hold its connection. HTTP/1
        // only (with `serve_connection`; `serve_connection_with_upgrades` ignores it): iPXE,
        // firmware and cloud-init speak it, and under HTTP/2 the client's flow control, not the
        // socket, paces the writes, so a slow reader would escape the pace.
        let mut connections =
            hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
        connections
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(boot.config.pace.idle);
        let connections = Arc::new(connections);
        loop {
            let (io, peer) = listener.accept().await;
            // The peer's address, for the `ConnectInfo<SocketAddr>` extractor.
            let service = router.clone().map_request(
                move |mut request: axum::http::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    request
                },
            );
            let connections = Arc::clone(&connections);
            tokio::spawn(async move {
                let io = TokioIo::new(io);
                let service = TowerToHyperService::new(service);
                if let Err(err) = connections.serve_connection(io, service).await {
                    tracing::debug!(%peer, "boot HTTP connection ended: {err}");
                }
            });
        }
    }
}

fn not_found(reason: String) -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        reason + "\n",
    )
        .into_response()
}

async fn machine_script(
    State(boot): State<Arc<BootHttp>>,
    ConnectInfo(source): ConnectInfo<SocketAddr>,
    Path(mac): Path<String>,
) -> Response {
    let Ok(mac) = mac.parse::<MacAddr>() else {
        return not_found(format!("{mac:?} is not a MAC address"));
    };
    // One answer whether no Hardware owns the MAC or its netboot is off: anyone on the boot
    // network may ask, and the answer must not tell them which MACs Wisp owns. The log says
    // which.
    let machines = boot.state.machines.current();
    let Some(machine) = machines
        .get(&mac)
        .filter(|machine| machine.allow_pxe)
        .cloned()
    else {
        match machines.get(&mac) {
            Some(machine) => {
                tracing::debug!(client = %mac, %source, hardware = %machine.hardware, "no iPXE script: netboot.allowPXE is false")
            }
            None => {
                tracing::debug!(client = %mac, %source, "no iPXE script: no Hardware owns this MAC")
            }
        }
        return not_found(format!("no iPXE script for {mac}"));
    };
    // Anyone on the boot network may ask for a script, and MACs are no secret: a script (a
    // custom one, kernel parameters, a token) goes only to the machine itself, at the address
    // its Hardware reserves (anywhere, when it reserves none).
    let from_machine = match (machine.address, source.ip()) {
        (None, _) => true,
        (Some(reserved), IpAddr::V4(ip)) => ip == reserved,
        (Some(reserved), IpAddr::V6(ip)) => ip.to_ipv4_mapped() == Some(reserved),
    };
    if !from_machine {
        tracing::debug!(client = %mac, %source, hardware = %machine.hardware, "no iPXE script: asked for from an address the Hardware does not reserve");
        return not_found(format!("no iPXE script for {mac}"));
    }
    let pending_work = machine.pending_work();
    let assets_base = boot.assets_base();
    // A boot starts here, with a token of its own, only when Wisp's DHCP has just pointed the
    // machine at this script; the boot's record is durable before the token goes out.
    let token = if pending_work && boot.state.script_handoffs.take(&mac) {
        let state = Arc::clone(&boot.state);
        // Without a reserved address, the address the machine's own DHCP gave it (another
        // server's, in proxy mode) identifies it for this boot.
        let learned = match source.ip() {
            IpAddr::V4(ip) if machine.address.is_none() => Some(ip),
            IpAddr::V6(ip) if machine.address.is_none() => ip.to_ipv4_mapped(),
            _ => None,
        };
        // Still wanted once the lock that ending boots takes is held: the workflow may have
        // ended since the snapshot above.
        let minted = tokio::task::spawn_blocking(move || {
            let machines = &state.machines;
            state.tokens.mint(mac, learned, || {
                machines
                    .current()
                    .get(&mac)
                    .is_some_and(|machine| machine.pending_work())
            })
        });
        match minted.await {
            Ok(Ok(token)) => token,
            Ok(Err(err)) => {
                // The handoff stands: the machine's retry may start the boot.
                boot.state.script_handoffs.record(mac);
                tracing::error!(client = %mac, "cannot start the boot: {err}");
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("cannot start the boot of {mac}: {err}\n"),
                )
                    .into_response();
            }
            Err(err) => {
                tracing::error!(client = %mac, "starting the boot failed: {err}");
                return StatusCode::INTERNAL_SERVER_ERROR.into_response();
            }
        }
    } else {
        if pending_work && boot.log.allow(source.ip()) {
            tracing::info!(client = %mac, "iPXE script without a token: Wisp's DHCP did not just point the machine here, or this handoff already started a boot");
        }
        None
    };
    let peers = boot
        .state
        .peers
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let context = ScriptContext {
        server: boot.config.server,
        worker_api_port: boot.config.worker_api_port,
        peers: &peers,
        assets_base: &assets_base,
        arch_named_assets: script::arch_named_assets(&boot.config.assets_dir),
        pending_work,
        token: token.as_deref(),
    };
    if boot.log.allow(source.ip()) {
        tracing::info!(client = %mac, %source, pending_work, boot_started = token.is_some(), "iPXE script served");
        boot.state.events.record(
            mac,
            EventKind::Script,
            match (pending_work, token.is_some()) {
                (true, true) => "iPXE script served: a boot into the provisioning OS starts",
                (true, false) => {
                    "iPXE script served, without a token (no DHCP handoff just before)"
                }
                (false, _) => "iPXE script served: no work, boot from disk",
            }
            .to_string(),
        );
    }
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        script::script(&machine, &context),
    )
        .into_response()
}

/// The iPXE binaries, for UEFI HTTP boot clients.
async fn boot_binary(State(boot): State<Arc<BootHttp>>, Path(file): Path<String>) -> Response {
    match boot.boot_files.get(&file) {
        Some(bytes) => {
            // Shares the loaded file rather than copying it for each request.
            let body = axum::body::Bytes::from_owner(Arc::clone(bytes));
            ([(header::CONTENT_TYPE, "application/efi")], body).into_response()
        }
        None => not_found(format!("no iPXE binary named {file:?}")),
    }
}

/// Answers 400 to a request without `Host`, which HTTP/1.1 requires (RFC 9112 3.2) and which
/// hyper does not enforce.
async fn host_required(request: Request, next: Next) -> Response {
    if request.headers().contains_key(header::HOST) || request.uri().authority().is_some() {
        return next.run(request).await;
    }
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "a request needs a Host header\n",
    )
        .into_response()
}

/// Refuses an asset request unless it names a file beneath the assets directory (see
/// [`assets::may_serve`]), before `ServeDir`, which would follow a symlink out, sees it.
async fn assets_beneath_only(
    State(boot): State<Arc<BootHttp>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if path.starts_with("/assets/") && !assets::may_serve(&boot.config.assets_dir, path) {
        tracing::debug!(
            path,
            "asset refused: not a file beneath the assets directory"
        );
        return not_found("no such asset".into());
    }
    next.run(request).await
}

/// Counts requests by route (the pattern, not the path, so that MACs do not explode the labels).
async fn count_requests(
    State(boot): State<Arc<BootHttp>>,
    request: Request,
    next: Next,
) -> Response {
    // Nested services (the assets) carry no matched path; name them by their prefix.
    let route = match request.extensions().get::<MatchedPath>() {
        Some(path) => path.as_str().to_string(),
        None if request.uri().path().starts_with("/assets/") => "/assets".to_string(),
        None => "unmatched".to_string(),
    };
    let response = next.run(request).await;
    count_request(&boot.state.metrics, &route, response.status().as_u16());
    response
}

fn count_request(metrics: &Metrics, route: &str, status: u16) {
    let labels = HttpLabels {
        route: route.to_string(),
        status: status.to_string(),
    };
    metrics.http_requests.get_or_create(&labels).inc();
}
