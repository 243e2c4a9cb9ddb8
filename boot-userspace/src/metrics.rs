//! Prometheus metrics, served at `/metrics`.
use std::sync::Arc;

use prometheus_client::{
    collector::Collector,
    encoding::{text::encode, DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::ConstCounter, counter::Counter, family::Family, gauge::ConstGauge,
        histogram::Histogram, MetricType,
    },
    registry::Registry,
};

use crate::gate::Gate;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DhcpLabels {
    /// DHCP message type (`discover`, `request`, ...) or `malformed`.
    pub message_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TftpLabels {
    /// `served`, `not_found`, `denied` (paths, writes), `busy` or `malformed`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route pattern, such as `/ipxe/{mac}/auto.ipxe`.
    pub route: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerCallLabels {
    /// `GetAction` or `ReportActionStatus`.
    pub method: String,
    /// The gRPC status code: `Ok`, `NotFound`, `PermissionDenied`, ...
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    /// `dhcp`, `tftp`, `http`, `ndp`, or `panic`.
    pub protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub dhcp_received: Family<DhcpLabels, Counter>,
    pub dhcp_replies: Family<DhcpLabels, Counter>,
    pub dhcp_ignored: Family<ReasonLabels, Counter>,
    pub tftp_requests: Family<TftpLabels, Counter>,
    pub tftp_bytes: Counter,
    /// IPv6 router solicitations: `answered`, `not_owned`, `malformed` or `send_failed`.
    pub router_solicitations: Family<OutcomeLabels, Counter>,
    pub http_requests: Family<HttpLabels, Counter>,
    pub worker_calls: Family<WorkerCallLabels, Counter>,
    pub action_reports: Family<StateLabels, Counter>,
    pub log_lines_suppressed: Family<ProtocolLabels, Counter>,
    pub events_dropped: Counter,
    pub output_lines_dropped: Counter,
    /// Machines by stage of their provisioning (the rack view's).
    pub machines: Family<StageLabels, prometheus_client::metrics::gauge::Gauge>,
    /// How long machines stayed in each stage they left.
    pub stage_seconds: Family<StageLabels, Histogram, fn() -> Histogram>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub stage: &'static str,
}

/// From a second (a DHCP exchange) to an hour (an image streamed over a slow link).
fn stage_histogram() -> Histogram {
    Histogram::new([
        1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0,
    ])
}

impl Metrics {
    pub fn new(gate: Arc<Gate>) -> Self {
        let mut registry = Registry::with_prefix("wisp");
        let mut metric = Registering(&mut registry);
        let metrics = Metrics {
            dhcp_received: metric.add(
                "dhcp_received",
                "DHCP messages that passed the gate and reached the DHCP server, by type",
            ),
            dhcp_replies: metric.add(
                "dhcp_replies",
                "DHCP replies sent, by type (offer, ack, nak)",
            ),
            dhcp_ignored: metric.add("dhcp_ignored", "DHCP requests that got no reply, by reason"),
            tftp_requests: metric.add("tftp_requests", "TFTP requests, by outcome"),
            tftp_bytes: metric.add("tftp_bytes", "Bytes of boot files handed to TFTP transfers"),
            router_solicitations: metric.add(
                "router_solicitations",
                "IPv6 router solicitations, by outcome (only owned machines' are answered)",
            ),
            http_requests: metric.add("http_requests", "Boot HTTP requests, by route and status"),
            worker_calls: metric.add(
                "worker_api_calls",
                "Worker API (gRPC) calls, by method and status code",
            ),
            action_reports: metric.add(
                "workflow_action_reports",
                "Action reports accepted from workers, by reported state",
            ),
            log_lines_suppressed: metric.add(
                "log_lines_suppressed",
                "Log lines that peers on the boot network caused beyond their budget, left out",
            ),
            events_dropped: metric.add(
                "events_dropped",
                "Machine events kept in memory only: the event journal's queue was full",
            ),
            output_lines_dropped: metric.add(
                "action_output_lines_dropped",
                "Lines of actions' output kept in memory only: the output journal's queue was full",
            ),
            machines: metric.add("machines", "Machines Wisp owns, by stage of provisioning"),
            stage_seconds: {
                let family = Family::new_with_constructor(stage_histogram as fn() -> Histogram);
                metric.0.register(
                    "stage_seconds",
                    "How long machines stayed in each stage of provisioning they left",
                    family.clone(),
                );
                family
            },
            registry: Registry::default(),
        };
        registry.register_collector(Box::new(GateCollector(gate)));
        for state in [
            workflow::run::State::Running,
            workflow::run::State::Success,
            workflow::run::State::Failed,
            workflow::run::State::Timeout,
        ] {
            let _ = metrics.action_reports.get_or_create(&StateLabels {
                state: state.to_string(),
            });
        }
        // Every stage's series from the start, as every counter's.
        for stage in crate::rack::Stage::ALL {
            let labels = StageLabels {
                stage: stage.as_str(),
            };
            let _ = metrics.machines.get_or_create(&labels);
            let _ = metrics.stage_seconds.get_or_create(&labels);
        }
        Metrics {
            registry,
            ..metrics
        }
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Registers each metric as it is made, so that its name and help stand beside its field.
struct Registering<'a>(&'a mut Registry);

impl Registering<'_> {
    fn add<M: Default + Clone + prometheus_client::registry::Metric>(
        &mut self,
        name: &str,
        help: &str,
    ) -> M {
        let metric = M::default();
        self.0.register(name, help, metric.clone());
        metric
    }
}

/// Reads the gate's counters (the XDP program's per-CPU maps, summed) at scrape time.
struct GateCollector(Arc<Gate>);

impl std::fmt::Debug for GateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GateCollector")
    }
}

impl Collector for GateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = match self.0.stats() {
            Ok(stats) => stats,
            Err(err) => {
                tracing::warn!("cannot read the gate's counters for /metrics: {err:#}");
                return Ok(());
            }
        };
        let mut packets = encoder.encode_descriptor(
            "gate_packets",
            "Packets judged by the DHCP gate, by verdict",
            None,
            MetricType::Counter,
        )?;
        for (verdict, value) in &stats.counters {
            let labels = [("verdict", verdict.as_str())];
            ConstCounter::new(*value).encode(packets.encode_family(&labels)?)?;
        }
        let allowlist = encoder.encode_descriptor(
            "gate_allowlist_size",
            "MACs in the gate's allowlist",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(stats.allowlist_size as i64).encode(allowlist)?;
        let unknown = encoder.encode_descriptor(
            "gate_unknown_macs",
            "Distinct unknown MACs recently seen asking for DHCP",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(stats.unknown_macs.len() as i64).encode(unknown)
    }
}
