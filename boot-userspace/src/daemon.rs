//! `wisp serve`: opens the stores, attaches the gate, loads the machine table, and serves the
//! boot network and the API until SIGINT or SIGTERM, then detaches the gate. Each step is one
//! function below, in the order [`serve`] calls them.
use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use boot_ebpf::UnknownPolicy;
use tokio::{
    signal::unix::{signal, SignalKind},
    task::JoinSet,
};
use workflow::{
    catalog::Catalog,
    engine::Engine,
    store::{BootStore, EtcdStore, LeaseStore, RedbStore, RunsChanged, Store, Watched},
};

use crate::{
    api::{auth::ApiToken, routes::router},
    boot_files::BootFiles,
    config::Settings,
    dhcp::{boot::BootConfig, DhcpConfig, DhcpServer, LeaseHolders},
    gate::Gate,
    http::{BootHttp, BootHttpConfig},
    identity::{MachineIdentity, MachineTokens},
    metrics::{Metrics, StageLabels},
    net::{self, PaceLimits},
    state::AppState,
    tftp::{self, TftpConfig},
    worker_api::WorkerApi,
};

pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let address = served_address(&settings.interface)?;
    raise_open_files_limit();
    let stores = open_stores(&settings)?;
    let shared = stores.shared.clone();
    let boot_files = Arc::new(BootFiles::load(&settings.ipxe_dir)?);
    tracing::info!(files = ?boot_files.names().collect::<Vec<_>>(), "iPXE binaries loaded from {}", settings.ipxe_dir.display());
    let gate = Arc::new(start_gate(&settings)?);
    let state = load_state(&settings, stores, Arc::clone(&gate))?;

    // One appliance of those sharing the store answers DHCP on the segment at a time.
    let leadership = shared.as_ref().map(|store| {
        Arc::new(store.lead(
            &format!("dhcp/{}", settings.segment),
            &format!("{address}"),
            DHCP_LEADERSHIP_TTL,
        ))
    });
    let mut services = spawn_boot_services(&settings, address, &state, boot_files, leadership);
    let mut background = spawn_background_tasks(&settings, &state);
    let me = format!("{address}:{}", settings.worker_api_port);
    if let Some(shared) = shared {
        background.spawn(follow_peers(
            Arc::clone(&shared),
            settings.segment.clone(),
            me,
            Arc::clone(&state),
        ));
        background.spawn(follow_other_appliances(shared, Arc::clone(&state)));
    }
    let api = serve_api(&settings, Arc::clone(&state));
    let outcome = tokio::select! {
        result = api => result,
        Some(result) = services.join_next() => result.context("boot-network service").and_then(|r| r),
    };

    services.shutdown().await;
    background.abort_all();
    if gate.detach() {
        tracing::info!(interface = settings.interface, "gate detached");
    }
    outcome?;
    tracing::info!("shut down cleanly");
    Ok(())
}

/// The served interface's IPv4 address, which every boot-network service listens on.
fn served_address(interface: &str) -> anyhow::Result<Ipv4Addr> {
    nix::net::if_::if_nametoindex(interface)
        .map_err(|_| anyhow::anyhow!("interface {interface:?} does not exist (see `ip link`)"))?;
    net::interface_ipv4(interface)
}

/// Every booting machine holds connections (HTTP, the worker API): a rack needs more than the
/// usual soft limit of 1024 descriptors.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open files limit"),
        Err(err) => tracing::warn!("could not raise the open files limit: {err}"),
    }
}

/// Where resources, runs, leases and boots are kept.
struct Stores {
    resources: Arc<dyn Store>,
    leases: Arc<dyn LeaseStore>,
    boots: Arc<dyn BootStore>,
    /// The etcd store, when other appliances share it.
    shared: Option<Arc<EtcdStore>>,
}

/// The embedded store (redb, with leases in their journal, and leases that earlier versions
/// kept in redb moved there once), or an etcd cluster's.
fn open_stores(settings: &Settings) -> anyhow::Result<Stores> {
    if !settings.store.is_empty() {
        // The data directory still holds what is this appliance's own: its API token and keys.
        workflow::store::private::create_dir(&settings.data_dir)
            .with_context(|| format!("creating {}", settings.data_dir.display()))?;
        let etcd = Arc::new(
            EtcdStore::connect(&settings.store)
                .with_context(|| format!("opening the store at {}", settings.store))?,
        );
        return Ok(Stores {
            resources: Arc::clone(&etcd) as Arc<dyn Store>,
            leases: Arc::clone(&etcd) as Arc<dyn LeaseStore>,
            boots: Arc::clone(&etcd) as Arc<dyn BootStore>,
            shared: Some(etcd),
        });
    }
    let store = Arc::new(RedbStore::open(&settings.data_dir)?);
    let leases = Arc::new(settings.lease_sync.open_journal(&settings.data_dir)?);
    let moved = store
        .move_leases_to(&*leases)
        .context("moving leases from wisp.redb to the lease journal")?;
    if moved > 0 {
        tracing::info!(
            leases = moved,
            "leases moved from wisp.redb to the lease journal"
        );
    }
    Ok(Stores {
        resources: Arc::clone(&store) as Arc<dyn Store>,
        leases,
        boots: store,
        shared: None,
    })
}

fn start_gate(settings: &Settings) -> anyhow::Result<Gate> {
    let policy = if settings.discovery {
        UnknownPolicy::Pass
    } else {
        UnknownPolicy::Drop
    };
    Gate::start(&settings.interface, settings.xdp_mode, policy)
}

/// The shared state, with the workflow runs and the machine table loaded from the store (and
/// the gate's allowlist made to match it).
fn load_state(
    settings: &Settings,
    stores: Stores,
    gate: Arc<Gate>,
) -> anyhow::Result<Arc<AppState>> {
    let Stores {
        resources,
        leases,
        boots,
        ..
    } = stores;
    let tokens = MachineTokens::load(&settings.data_dir, boots, settings.token_lifetime.0)?;
    if settings.machine_identity == MachineIdentity::Address {
        tracing::warn!("machine-identity = address: a host that takes a machine's reserved address is taken for that machine by the worker API and the metadata service");
    }
    let catalog = Arc::new(Catalog::new(resources));
    let engine = Engine::load(catalog).context("loading workflow runs from the store")?;
    let metrics = Arc::new(Metrics::new(Arc::clone(&gate)));
    crate::log_budget::log_panics(&metrics.log_lines_suppressed);
    let holders = Arc::new(LeaseHolders::load(&*leases).context("loading the leases")?);
    let machines = Arc::new(crate::machines::Machines::default());
    let events = crate::events::EventLog::open(
        &settings.data_dir,
        Arc::clone(&machines),
        metrics.events_dropped.clone(),
    )
    .context("opening the machines' event log")?;
    let outputs = crate::action_output::ActionOutputs::open(
        &settings.data_dir,
        metrics.output_lines_dropped.clone(),
    )
    .context("opening the actions' output")?;
    let state = Arc::new(AppState::new(
        engine,
        (machines, Arc::new(events), Arc::new(outputs)),
        gate,
        metrics,
        (leases, holders),
        (Arc::new(tokens), settings.machine_identity),
        settings.chainload_window.0,
    ));
    let machines = state
        .sync_hardware()
        .context("loading Hardware from the store")?;
    let source = if settings.store.is_empty() {
        settings.data_dir.display().to_string()
    } else {
        settings.store.clone()
    };
    tracing::info!(machines, "Hardware loaded from {source}");
    for conflict in state.lease_conflicts()? {
        tracing::warn!("{conflict}");
    }
    Ok(state)
}

/// DHCP, TFTP, boot HTTP and the worker API on the served interface; the first to fail stops
/// the daemon.
/// How long the other appliances wait for a DHCP leader that went silent before one takes
/// over: a few seconds, which a machine's DHCP retries ride out.
const DHCP_LEADERSHIP_TTL: Duration = Duration::from_secs(3);

fn spawn_boot_services(
    settings: &Settings,
    address: Ipv4Addr,
    state: &Arc<AppState>,
    boot_files: Arc<BootFiles>,
    leadership: Option<Arc<workflow::store::Leadership>>,
) -> JoinSet<anyhow::Result<()>> {
    let mut services = JoinSet::new();
    let dhcp = DhcpServer::new(
        DhcpConfig {
            interface: settings.interface.clone(),
            mode: settings.dhcp_mode,
            boot: BootConfig {
                server: address,
                http_base: format!("http://{address}:{}", settings.boot_http_port),
                binaries: boot_files.names().map(str::to_string).collect(),
            },
            chainload_window: settings.chainload_window.0,
        },
        Arc::clone(&state.machines),
        Arc::clone(&state.gate),
        Arc::clone(&state.metrics),
        Arc::clone(&state.leases),
        Arc::clone(&state.holders),
        (
            Arc::clone(&state.script_handoffs),
            Arc::clone(&state.events),
        ),
    );
    let dhcp = match leadership {
        Some(leadership) => dhcp.with_leadership(leadership),
        None => dhcp,
    };
    services.spawn(dhcp.serve());
    let pace = PaceLimits {
        idle: settings.connection_timeout.0,
        min_rate: settings.min_transfer_rate,
    };
    let worker_api = WorkerApi {
        state: Arc::clone(state),
        connection_timeout: settings.connection_timeout.0,
    };
    services.spawn(worker_api.serve(SocketAddr::from((address, settings.worker_api_port))));
    let boot_http = BootHttp::new(
        BootHttpConfig {
            server: address,
            port: settings.boot_http_port,
            worker_api_port: settings.worker_api_port,
            assets_dir: settings.assets_dir.clone(),
            pace,
            max_per_client: settings.http_max_per_client,
        },
        Arc::clone(state),
        Arc::clone(&boot_files),
    );
    services.spawn(boot_http.serve());
    if settings.answer_router_solicitations {
        services.spawn(crate::ndp::serve(
            settings.interface.clone(),
            Arc::clone(&state.machines),
            Arc::clone(&state.metrics),
        ));
    }
    services.spawn(tftp::serve(
        TftpConfig {
            interface: settings.interface.clone(),
            address,
            max_transfers: settings.tftp_max_transfers,
            max_per_client: settings.tftp_max_per_client,
            timeout: settings.tftp_timeout.0,
        },
        boot_files,
        Arc::clone(&state.metrics),
        Arc::clone(&state.events),
    ));
    services
}

/// The periodic work: repairing the allowlist, ending workflows whose timeouts passed, and the
/// BMC controller.
fn spawn_background_tasks(settings: &Settings, state: &Arc<AppState>) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    tasks.spawn(reconcile_hardware(
        Arc::clone(state),
        settings.reconcile_interval.0,
    ));
    tasks.spawn(enforce_timeouts(Arc::clone(state)));
    tasks.spawn(measure_rack(Arc::clone(state)));
    let bmc = crate::bmc::controller::Controller::new(
        Arc::clone(state),
        crate::bmc::controller::Settings {
            poll_interval: settings.bmc_poll_interval.0,
            power_timeout: settings.bmc_power_timeout.0,
        },
    );
    tasks.spawn(bmc.run());
    tasks
}

/// The CLI's API, until SIGINT or SIGTERM.
async fn serve_api(settings: &Settings, state: Arc<AppState>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding the API to {}", settings.listen))?;
    let token = ApiToken::load_or_create(&settings.api_token_file)?;
    tracing::info!(
        token_file = %settings.api_token_file.display(),
        "API listening on http://{}",
        settings.listen
    );
    let loopback_host = settings.listen.ip().is_loopback();
    // Ready once the API answers, the boot services having started before it: what systemd
    // waits for with Type=notify (nothing is sent outside systemd).
    if let Err(err) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!("telling systemd the daemon is ready: {err}");
    }
    axum::serve(listener, router(state, token, loopback_host))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("API server")
}

/// Keeps this appliance up with what the other appliances write to the shared store, from
/// its watches: the machine table, XDP allowlist and pending work when resources change, and
/// the machines' boots (so that a token another appliance minted is good here).
async fn follow_other_appliances(store: Arc<EtcdStore>, state: Arc<AppState>) {
    let resources = Arc::new(tokio::sync::Notify::new());
    let boots = Arc::new(tokio::sync::Notify::new());
    let notify = Arc::clone(&resources);
    store.watch(Watched::Resources, move || notify.notify_one());
    let notify = Arc::clone(&boots);
    store.watch(Watched::Boots, move || notify.notify_one());
    // In order: a run's later change must not be taken before its earlier one.
    let (changed_runs, mut runs) = tokio::sync::mpsc::unbounded_channel();
    let again = changed_runs.clone();
    store.watch_runs(move |changed| {
        let _ = changed_runs.send(changed);
    });
    loop {
        tokio::select! {
            Some(changed) = runs.recv() => {
                let observing = Arc::clone(&state);
                let observed =
                    tokio::task::spawn_blocking(move || observing.engine.observe(changed)).await;
                let failed = match observed {
                    Ok(Ok(change)) => {
                        if change.finished {
                            if let Err(err) = state.sync_hardware_coalesced().await {
                                tracing::error!("following the shared store's runs: {err:#}");
                            }
                        }
                        None
                    }
                    Ok(Err(err)) => Some(err.to_string()),
                    Err(err) => Some(err.to_string()),
                };
                // The watch has moved past this change: every run is read again, in a second.
                if let Some(err) = failed {
                    tracing::error!("following the shared store's runs: {err}; all again in 1 s");
                    let again = again.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        let _ = again.send(RunsChanged::All);
                    });
                }
            }
            () = resources.notified() => {
                if let Err(err) = state.sync_hardware_coalesced().await {
                    tracing::error!("following the shared store: {err:#}");
                }
            }
            () = boots.notified() => {
                let tokens = Arc::clone(&state.tokens);
                match tokio::task::spawn_blocking(move || tokens.reload_boots()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => tracing::error!("following the shared store's boots: {err}"),
                    Err(err) => tracing::error!("following the shared store's boots: {err}"),
                }
            }
        }
    }
}

/// Registers this appliance on the segment, so that the others name it in their scripts, and
/// keeps the list of the others, which this one's scripts name.
async fn follow_peers(store: Arc<EtcdStore>, segment: String, me: String, state: Arc<AppState>) {
    let mut ticks = tokio::time::interval(PEERS_PERIOD);
    let mut registered = false;
    loop {
        ticks.tick().await;
        if !registered {
            let (registering, on, at) = (Arc::clone(&store), segment.clone(), me.clone());
            match tokio::task::spawn_blocking(move || registering.register(&on, &at)).await {
                Ok(Ok(())) => {
                    registered = true;
                    tracing::info!(segment, appliance = me, "registered");
                }
                Ok(Err(err)) => tracing::warn!("registering this appliance: {err}; again soon"),
                Err(err) => tracing::warn!("registering this appliance: {err}; again soon"),
            }
        }
        let listing = Arc::clone(&store);
        let segment = segment.clone();
        match tokio::task::spawn_blocking(move || listing.appliances(&segment)).await {
            Ok(Ok(mut peers)) => {
                peers.retain(|peer| *peer != me);
                peers.sort();
                *state.peers.write().unwrap_or_else(|p| p.into_inner()) = peers;
            }
            // Kept as they were: etcd out of reach says nothing about the appliances.
            Ok(Err(err)) => tracing::warn!("listing the other appliances: {err}"),
            Err(err) => tracing::warn!("listing the other appliances: {err}"),
        }
    }
}

/// Keeps the rack's metrics: machines by stage, and how long they stayed in each stage they
/// left, looked at every [`RACK_PERIOD`].
async fn measure_rack(state: Arc<AppState>) {
    let mut ticks = tokio::time::interval(RACK_PERIOD);
    let mut seen = crate::rack::SeenStages::new();
    loop {
        ticks.tick().await;
        let looking = Arc::clone(&state);
        let rows = match tokio::task::spawn_blocking(move || looking.rack()).await {
            Ok(Ok(rows)) => rows,
            Ok(Err(err)) => {
                tracing::debug!("the rack's metrics: {err}");
                continue;
            }
            Err(err) => {
                tracing::debug!("the rack's metrics: {err}");
                continue;
            }
        };
        let metrics = &state.metrics;
        for stage in crate::rack::Stage::ALL {
            let count = rows.iter().filter(|row| row.stage == stage).count();
            metrics
                .machines
                .get_or_create(&StageLabels {
                    stage: stage.as_str(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        for (stage, stayed) in crate::rack::left_stages(&mut seen, &rows) {
            metrics
                .stage_seconds
                .get_or_create(&StageLabels {
                    stage: stage.as_str(),
                })
                .observe(stayed.as_secs_f64());
        }
    }
}

/// How often the rack's metrics look at the machines.
const RACK_PERIOD: Duration = Duration::from_secs(2);

/// How often the list of the other appliances is read again.
const PEERS_PERIOD: Duration = Duration::from_secs(2);

async fn reconcile_hardware(state: Arc<AppState>, period: Duration) {
    let mut ticks = tokio::time::interval(period);
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
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
}
