//! `wisp serve`: opens the store, attaches the gate, and serves the DHCP receive path and the
//! API until SIGINT or SIGTERM, then detaches the gate.
use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use boot_ebpf::UnknownPolicy;
use tokio::signal::unix::{signal, SignalKind};
use workflow::{
    catalog::Catalog,
    engine::Engine,
    store::{LeaseJournal, RedbStore},
};

use crate::{
    api::{
        routes::{router, AppState},
        DEFAULT_LISTEN,
    },
    dhcp::{boot::BootConfig, handler::Mode, DhcpServer, SharedReservations},
    gate::{Gate, RequestedMode},
    http::BootHttp,
    identity::MachineTokens,
    metrics::Metrics,
    net,
    tftp::{self, BootFiles},
    worker_api::{WorkerApi, WORKER_API_PORT},
};

/// `wisp serve`'s options.
#[derive(Debug, clap::Args)]
pub struct ServeConfig {
    /// The interface the machines boot on; the XDP gate attaches here.
    #[arg(long, short)]
    pub interface: String,
    #[arg(long, default_value = "/var/lib/wisp")]
    pub data_dir: PathBuf,
    /// Address of the HTTP API (and /metrics).
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    #[arg(long, value_enum, default_value = "auto")]
    pub xdp_mode: RequestedMode,
    /// Pass DHCP from unknown MACs to userspace instead of dropping it (they are recorded
    /// either way).
    #[arg(long)]
    pub discovery: bool,
    /// Where the iPXE binaries are (Debian's `ipxe` package puts them here).
    #[arg(long, default_value = "/usr/lib/ipxe")]
    pub ipxe_dir: PathBuf,
    /// `reservation`: hand out each machine's reserved address. `proxy`: another server hands
    /// out addresses; answer netbooting clients with boot information only.
    #[arg(long, value_enum, default_value = "reservation")]
    pub dhcp_mode: Mode,
    /// Boot assets (kernel, initramfs, images), served at http://<interface address>:8080/assets/.
    /// Defaults to <data-dir>/assets.
    #[arg(long)]
    pub assets_dir: Option<PathBuf>,
}

/// The boot HTTP server's port on the served interface (iPXE scripts, kernels, images).
pub const BOOT_HTTP_PORT: u16 = 8080;

pub async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    nix::net::if_::if_nametoindex(config.interface.as_str()).map_err(|_| {
        anyhow::anyhow!(
            "interface {:?} does not exist (see `ip link`)",
            config.interface
        )
    })?;
    // Every booting machine holds connections (HTTP, the worker API): a rack needs more than
    // the usual soft limit of 1024 descriptors.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open files limit"),
        Err(err) => tracing::warn!("could not raise the open files limit: {err}"),
    }
    let store = RedbStore::open(&config.data_dir)?;
    let leases = Arc::new(LeaseJournal::open(&config.data_dir)?);
    let moved = store
        .move_leases_to(&*leases)
        .context("moving leases from wisp.redb to the lease journal")?;
    if moved > 0 {
        tracing::info!(
            leases = moved,
            "leases moved from wisp.redb to the lease journal"
        );
    }
    let policy = if config.discovery {
        UnknownPolicy::Pass
    } else {
        UnknownPolicy::Drop
    };
    let address = net::interface_ipv4(&config.interface)?;
    let boot_files = Arc::new(BootFiles::load(&config.ipxe_dir)?);
    tracing::info!(files = ?boot_files.names().collect::<Vec<_>>(), "iPXE binaries loaded from {}", config.ipxe_dir.display());

    let gate = Arc::new(Gate::start(&config.interface, config.xdp_mode, policy)?);
    let metrics = Arc::new(Metrics::new(Arc::clone(&gate)));
    let reservations = Arc::new(SharedReservations::default());
    let catalog = Catalog::new(store.clone());
    let engine = Engine::load(&catalog).context("loading workflow runs from the store")?;
    let state = Arc::new(AppState {
        catalog,
        engine,
        gate: Arc::clone(&gate),
        reservations: Arc::clone(&reservations),
        metrics: Arc::clone(&metrics),
        leases: Arc::clone(&leases),
        hardware_sync: Mutex::new(()),
        coalesced_syncs: Default::default(),
    });
    let owned = state
        .sync_hardware()
        .context("loading Hardware from the store")?;
    tracing::info!(
        machines = owned,
        "Hardware loaded from {}",
        config.data_dir.display()
    );

    // The boot-network services; the first to fail stops the daemon.
    let dhcp = DhcpServer {
        interface: config.interface.clone(),
        mode: config.dhcp_mode,
        boot: BootConfig {
            server: address,
            http_base: format!("http://{address}:{BOOT_HTTP_PORT}"),
            binaries: boot_files.names().map(str::to_string).collect(),
        },
        reservations,
        gate: Arc::clone(&gate),
        metrics: Arc::clone(&metrics),
        leases,
        handoffs: Default::default(),
        declined: Default::default(),
    };
    let tokens = Arc::new(MachineTokens::load_or_create(&config.data_dir)?);
    let mut services = tokio::task::JoinSet::new();
    services.spawn(dhcp.serve());
    let worker_api = WorkerApi {
        state: Arc::clone(&state),
        tokens: Arc::clone(&tokens),
    };
    services.spawn(worker_api.serve(SocketAddr::from((address, WORKER_API_PORT))));
    let boot_http = BootHttp {
        state: Arc::clone(&state),
        tokens,
        boot_files: Arc::clone(&boot_files),
        server: address,
        port: BOOT_HTTP_PORT,
        assets_dir: config
            .assets_dir
            .clone()
            .unwrap_or_else(|| config.data_dir.join("assets")),
    };
    services.spawn(boot_http.serve());
    services.spawn(tftp::serve(
        config.interface.clone(),
        address,
        boot_files,
        Arc::clone(&metrics),
    ));

    let reconcile_task = tokio::spawn(reconcile_hardware(Arc::clone(&state)));
    let timeouts_task = tokio::spawn(enforce_timeouts(Arc::clone(&state)));

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the API to {}", config.listen))?;
    tracing::info!("API listening on http://{}", config.listen);
    let api =
        axum::serve(listener, router(Arc::clone(&state))).with_graceful_shutdown(shutdown_signal());

    let outcome = tokio::select! {
        result = api => result.context("API server"),
        Some(result) = services.join_next() => result.context("boot-network service").and_then(|r| r),
    };
    services.shutdown().await;
    reconcile_task.abort();
    timeouts_task.abort();
    if gate.detach() {
        tracing::info!(interface = config.interface, "gate detached");
    }
    outcome?;
    tracing::info!("shut down cleanly");
    Ok(())
}

/// How often the allowlist is checked against the store, to repair a sync that failed.
const RECONCILE_PERIOD: Duration = Duration::from_secs(30);

async fn reconcile_hardware(state: Arc<AppState>) {
    let mut ticks = tokio::time::interval(RECONCILE_PERIOD);
    ticks.tick().await; // the first tick is immediate, and start-up has just synced
    loop {
        ticks.tick().await;
        let state = Arc::clone(&state);
        match tokio::task::spawn_blocking(move || state.sync_hardware()).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::error!("allowlist reconcile failed: {err:#}"),
            Err(err) => tracing::error!("allowlist reconcile task failed: {err}"),
        }
    }
}

/// How often running workflows are checked against their timeouts.
const TIMEOUT_CHECK_PERIOD: Duration = Duration::from_secs(1);

/// Ends the workflows whose global or action timeout has passed, even when their worker has
/// gone silent, and takes them out of the boot path's pending work.
async fn enforce_timeouts(state: Arc<AppState>) {
    let mut ticks = tokio::time::interval(TIMEOUT_CHECK_PERIOD);
    loop {
        ticks.tick().await;
        // The engine's lock may be held by a call that reads the store: not on a runtime thread.
        let checking = Arc::clone(&state);
        let ended = match tokio::task::spawn_blocking(move || {
            checking
                .engine
                .enforce_timeouts(std::time::SystemTime::now())
        })
        .await
        {
            Ok(ended) if ended.value > 0 => ended,
            Ok(_) => continue,
            Err(err) => {
                tracing::error!("the timeout check failed: {err}");
                continue;
            }
        };
        tracing::warn!(workflows = ended.value, "workflows timed out");
        let synced = match ended.durable.wait().await {
            Ok(_) => state.sync_hardware_coalesced().await,
            Err(err) => {
                state.reload_runs().await;
                Err(err.into())
            }
        };
        if let Err(err) = synced {
            tracing::error!("enforcing workflow timeouts failed: {err:#}");
        }
    }
}

async fn shutdown_signal() {
    let (mut interrupt, mut terminate) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(interrupt), Ok(terminate)) => (interrupt, terminate),
        (Err(err), _) | (_, Err(err)) => {
            tracing::error!("cannot install signal handlers: {err}");
            return std::future::pending().await;
        }
    };
    let name = tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    };
    tracing::info!("{name} received, shutting down");
}
