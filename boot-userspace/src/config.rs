//! `wisp serve`'s configuration: every setting from a flag, a `WISP_*` environment variable, an
//! optional TOML file (`--config`) or its default, in that order of precedence. The file
//! refuses keys it does not know, naming them, and `--print-config` shows what is in force.
use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::{
    api::DEFAULT_LISTEN,
    dhcp::{handler::Mode, leases::LeaseSync},
    gate::RequestedMode,
    identity::MachineIdentity,
};

/// A span of time written as people write it (`300s`, `5m`, `1h 30m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Interval(pub Duration);

impl FromStr for Interval {
    type Err = humantime::DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(text).map(Interval)
    }
}

impl TryFrom<String> for Interval {
    type Error = humantime::DurationError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<Interval> for String {
    fn from(interval: Interval) -> String {
        interval.to_string()
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_duration(self.0).fmt(f)
    }
}

/// Declares each setting once: its type, its default, and its flag's options. From the list
/// come [`Given`] (what one source says, every setting optional), [`Settings`] (what is in
/// force) and the merge between them, so that a new setting is one line here.
macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])*
        $field:ident: $ty:ty = $default:expr, env $env:literal $(, $arg:ident $(= $value:expr)?)*;
    )*) => {
        /// The settings one source gives (the flags and environment, or the file).
        #[derive(Debug, Default, clap::Args, Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "kebab-case")]
        pub struct Given {
            $(
                $(#[doc = $doc])*
                #[arg(long, env = $env $(, $arg $(= $value)?)*)]
                pub $field: Option<$ty>,
            )*
        }

        /// The settings in force.
        #[derive(Clone, Debug, Serialize)]
        #[serde(rename_all = "kebab-case")]
        pub struct Settings {
            $($(#[doc = $doc])* pub $field: $ty,)*
        }

        /// Each setting's key in the file, with its doc comment's lines, in declaration order.
        const DOCUMENTED: &[(&str, &[&str])] = &[$((stringify!($field), &[$($doc),*]),)*];

        impl Given {
            /// What this source gives, and what `lower` gives where this one is silent.
            fn over(self, lower: Given) -> Given {
                Given { $($field: self.$field.or(lower.$field),)* }
            }

            fn or_defaults(self) -> Settings {
                Settings { $($field: self.$field.unwrap_or_else(|| $default),)* }
            }
        }
    };
}

settings! {
    /// The interface the machines boot on; the XDP gate attaches here.
    interface: String = String::new(), env "WISP_INTERFACE", short;
    /// Where resources, runs, leases and tokens are kept.
    data_dir: PathBuf = PathBuf::from("/var/lib/wisp"), env "WISP_DATA_DIR";
    /// Where resources, runs, leases and boots are kept: empty for the embedded store in the
    /// data directory; `etcd://host1:2379,host2:2379` for an etcd cluster that several
    /// appliances share (docs/ha.md).
    store: String = String::new(), env "WISP_STORE";
    /// The boot segment this appliance serves, by a name the appliances sharing a store give
    /// it alike: one of them at a time answers DHCP there (docs/ha.md).
    segment: String = "default".to_string(), env "WISP_SEGMENT";
    /// Address of the HTTP API (and /metrics). Every request but /healthz needs the API token.
    listen: SocketAddr = DEFAULT_LISTEN.parse().expect("a valid default"), env "WISP_LISTEN";
    /// The API's bearer token, created (0600) on first start. Empty means <data-dir>/api.token.
    api_token_file: PathBuf = PathBuf::new(), env "WISP_API_TOKEN_FILE";
    /// `auto`, `native`, `skb` or `off` (the userspace gate).
    xdp_mode: RequestedMode = RequestedMode::Auto, env "WISP_XDP_MODE", value_enum;
    /// Pass DHCP from unknown MACs to userspace instead of dropping it (they are recorded
    /// either way).
    discovery: bool = false, env "WISP_DISCOVERY", num_args = 0..=1, default_missing_value = "true";
    /// Where the iPXE binaries are (Debian's `ipxe` package puts them here).
    ipxe_dir: PathBuf = PathBuf::from("/usr/lib/ipxe"), env "WISP_IPXE_DIR";
    /// `reservation`: hand out each machine's reserved address. `proxy`: another server hands
    /// out addresses; answer netbooting clients with boot information only.
    dhcp_mode: Mode = Mode::Reservation, env "WISP_DHCP_MODE", value_enum;
    /// Boot assets (kernel, initramfs, images), served at http://<interface address>:<boot HTTP
    /// port>/assets/. Empty means <data-dir>/assets.
    assets_dir: PathBuf = PathBuf::new(), env "WISP_ASSETS_DIR";
    /// The boot HTTP server's port on the served interface (iPXE scripts, assets, metadata).
    boot_http_port: u16 = 8080, env "WISP_BOOT_HTTP_PORT";
    /// The worker API's port on the served interface (Tinkerbell's is 42113).
    worker_api_port: u16 = 42113, env "WISP_WORKER_API_PORT";
    /// How long after Wisp hands a machine an iPXE binary its iPXE's DHCP counts as the
    /// chainload, and gets the script.
    chainload_window: Interval = Interval(crate::dhcp::DEFAULT_CHAINLOAD_WINDOW), env "WISP_CHAINLOAD_WINDOW";
    /// Answer the IPv6 router solicitations of owned machines that netboot with a router
    /// advertisement that configures nothing (lifetime 0, no prefixes), so that their iPXE
    /// stops waiting for IPv6 autoconfiguration; other hosts' are never answered.
    answer_router_solicitations: bool = true, env "WISP_ANSWER_ROUTER_SOLICITATIONS", num_args = 0..=1, default_missing_value = "true";
    /// When the embedded store syncs a lease to the disk: `background` (a thread syncs every
    /// 10 ms; a power loss can take the last moment's ACKed leases) or `before-ack`
    /// (every ACK waits for its fdatasync). Either survives a crash or kill -9.
    lease_sync: LeaseSync = LeaseSync::Background, env "WISP_LEASE_SYNC", value_enum;
    /// TFTP transfers at once; a request beyond them gets an error (the client retries).
    tftp_max_transfers: usize = crate::tftp::DEFAULT_MAX_TRANSFERS, env "WISP_TFTP_MAX_TRANSFERS";
    /// TFTP transfers from one client address at once, so that one host cannot hold every
    /// slot; raise it for many machines behind one NAT.
    tftp_max_per_client: usize = crate::tftp::DEFAULT_MAX_TRANSFERS_PER_CLIENT, env "WISP_TFTP_MAX_PER_CLIENT";
    /// Boot HTTP connections from one client address at once, so that one host cannot hold
    /// them all; raise it for many machines behind one NAT.
    http_max_per_client: usize = crate::http::assets::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS, env "WISP_HTTP_MAX_PER_CLIENT";
    /// How long TFTP waits for an acknowledgement when the client asks for no timeout.
    tftp_timeout: Interval = Interval(crate::tftp::DEFAULT_TIMEOUT), env "WISP_TFTP_TIMEOUT";
    /// How often the gate's allowlist and the machine table are checked against the store, to
    /// repair a sync that failed.
    reconcile_interval: Interval = Interval(Duration::from_secs(30)), env "WISP_RECONCILE_INTERVAL";
    /// What identifies a machine to the worker API and the metadata service: `token` (the
    /// token of its current boot, on its kernel command line) or `address` (its reserved
    /// address alone, as Tinkerbell trusts it: for Tinkerbell's own agent, and for cloud-init
    /// after the install). See docs/security.md.
    machine_identity: MachineIdentity = MachineIdentity::Token, env "WISP_MACHINE_IDENTITY", value_enum;
    /// How long a machine's token is good for after its boot starts; a newer boot, or the end
    /// of its workflow, ends it sooner.
    token_lifetime: Interval = Interval(Duration::from_secs(24 * 3600)), env "WISP_TOKEN_LIFETIME";
    /// How long a boot HTTP or worker API peer may leave its connection unused: to send a whole
    /// request head, between requests, to answer a keepalive probe; and the grace a response
    /// gets before `min-transfer-rate` counts.
    connection_timeout: Interval = Interval(Duration::from_secs(60)), env "WISP_CONNECTION_TIMEOUT";
    /// Bytes per second a boot HTTP response must average after that grace; a slower reader is
    /// cut off (the default lets a 1 GiB image take over four hours).
    min_transfer_rate: u64 = 64 << 10, env "WISP_MIN_TRANSFER_RATE";
    /// How often each BMC Machine's power state is read (and right after a Job changed it).
    bmc_poll_interval: Interval = Interval(Duration::from_secs(60)), env "WISP_BMC_POLL_INTERVAL";
    /// How long a BMC power action may take to reach its state before its Task fails.
    bmc_power_timeout: Interval = Interval(Duration::from_secs(120)), env "WISP_BMC_POWER_TIMEOUT";
}

/// `wisp serve`'s command line.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// A TOML file of settings (keys as the flags, without `--`); flags and `WISP_*`
    /// variables override it.
    #[arg(long, env = "WISP_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the settings in force, as TOML, and exit.
    #[arg(long)]
    pub print_config: bool,
    #[command(flatten)]
    pub given: Given,
}

impl ServeArgs {
    /// The settings in force: the flags and environment, then the file, then the defaults.
    pub fn settings(self) -> anyhow::Result<Settings> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => Given::default(),
        };
        let mut settings = self.given.over(file).or_defaults();
        anyhow::ensure!(
            !settings.interface.is_empty(),
            "no interface to serve: pass --interface, set WISP_INTERFACE, or set `interface` in \
             the configuration file"
        );
        for (key, interval) in [
            ("tftp-timeout", settings.tftp_timeout),
            ("chainload-window", settings.chainload_window),
            ("reconcile-interval", settings.reconcile_interval),
            ("connection-timeout", settings.connection_timeout),
            ("bmc-poll-interval", settings.bmc_poll_interval),
            ("bmc-power-timeout", settings.bmc_power_timeout),
        ] {
            anyhow::ensure!(
                !interval.0.is_zero(),
                "{key} = {interval}: it must be longer than 0"
            );
        }
        anyhow::ensure!(
            settings.min_transfer_rate > 0,
            "min-transfer-rate = 0: it must be at least 1 byte per second"
        );
        anyhow::ensure!(
            settings.tftp_max_transfers > 0,
            "tftp-max-transfers = 0: TFTP would refuse every machine"
        );
        anyhow::ensure!(
            settings.tftp_max_per_client > 0,
            "tftp-max-per-client = 0: TFTP would refuse every machine"
        );
        anyhow::ensure!(
            settings.http_max_per_client > 0,
            "http-max-per-client = 0: boot HTTP would refuse every machine"
        );
        if settings.api_token_file.as_os_str().is_empty() {
            settings.api_token_file = crate::api::auth::ApiToken::default_path(&settings.data_dir);
        }
        if settings.assets_dir.as_os_str().is_empty() {
            settings.assets_dir = settings.data_dir.join("assets");
        }
        let (assets, data) = (
            resolved(&settings.assets_dir)?,
            resolved(&settings.data_dir)?,
        );
        anyhow::ensure!(
            !data.starts_with(&assets),
            "assets-dir {} holds the data directory {}: boot HTTP would publish the key that \
             signs every machine's token",
            assets.display(),
            data.display()
        );
        let token = resolved(&settings.api_token_file)?;
        anyhow::ensure!(
            !token.starts_with(&assets),
            "api-token-file {} is inside assets-dir {}: boot HTTP would publish it",
            token.display(),
            assets.display()
        );
        // A file there that is not a token would be moved aside as invalid: a typo must not
        // touch the store or the key.
        anyhow::ensure!(
            !token.starts_with(&data) || token == data.join("api.token"),
            "api-token-file {} is inside data-dir {} under another name than api.token",
            token.display(),
            data.display()
        );
        Ok(settings)
    }
}

/// `path` as the kernel will resolve it: its symlinks followed and `..` taken, for as much of it
/// as exists, and the rest appended.
fn resolved(path: &Path) -> anyhow::Result<PathBuf> {
    let absolute = std::path::absolute(path)?;
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        match existing.canonicalize() {
            Ok(real) => {
                return Ok(rest.iter().rev().fold(real, |mut path, part| {
                    match part {
                        std::path::Component::ParentDir => {
                            path.pop();
                        }
                        std::path::Component::Normal(name) => path.push(name),
                        _ => {}
                    }
                    path
                }))
            }
            Err(_) => {
                let Some(parent) = existing.parent() else {
                    return Ok(absolute);
                };
                rest.extend(existing.components().next_back());
                existing = parent;
            }
        }
    }
}

fn read_file(path: &Path) -> anyhow::Result<Given> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the configuration file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("in the configuration file {}", path.display()))
}

impl Settings {
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("every setting is a TOML value")
    }
}

/// The configuration file a package installs: every setting, documented and commented out at
/// its default, so that the file shows what can be set without changing anything.
pub fn default_file() -> String {
    let defaults = Given::default().or_defaults().to_toml();
    let mut file = String::from(
        "# Wisp's configuration (`wisp serve --config /etc/wisp/wisp.toml`). Each setting is shown\n\
         # at its default; a flag or a WISP_* variable overrides the file, and\n\
         # `wisp serve --config FILE --print-config` shows what is in force. Only `interface`\n\
         # must be set.\n",
    );
    for ((field, doc), line) in DOCUMENTED.iter().zip(defaults.lines()) {
        debug_assert!(line.starts_with(&field.replace('_', "-")));
        file.push('\n');
        for doc_line in *doc {
            file.push_str(&format!("#{}\n", doc_line.trim_end()));
        }
        match *field {
            "interface" => file.push_str("# interface = \"eth1\"\n"),
            _ => file.push_str(&format!("# {line}\n")),
        }
    }
    file
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_file_documents_every_setting_at_its_default() {
        let file = default_file();
        let keys: Vec<String> = DOCUMENTED
            .iter()
            .map(|(field, _)| field.replace('_', "-"))
            .collect();
        // Its settings, uncommented, make a file that gives the defaults (and an interface).
        let uncommented: String = file
            .lines()
            .filter_map(|line| line.strip_prefix("# "))
            .filter(|rest| {
                keys.iter()
                    .any(|key| rest.starts_with(&format!("{key} = ")))
            })
            .map(|line| format!("{line}\n"))
            .collect();
        let given: Given = toml::from_str(&uncommented).expect("a valid file");
        let mut expected = Given::default().or_defaults();
        expected.interface = "eth1".into();
        assert_eq!(given.or_defaults().to_toml(), expected.to_toml());
        assert_eq!(uncommented.lines().count(), keys.len(), "{file}");
        assert!(DOCUMENTED.iter().all(|(_, doc)| !doc.is_empty()));
    }
}
