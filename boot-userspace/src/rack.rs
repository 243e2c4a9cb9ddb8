//! The rack view: every machine Wisp owns and the stage of its provisioning (off, DHCP,
//! iPXE, provisioning OS, action n of m, installed, failed), for the page at `/` and
//! `GET /v1/rack`. A stage is a pure function of the machine's current workflow run and its
//! last event.
use std::{
    collections::HashMap,
    net::Ipv4Addr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use workflow::{
    resource::{MacAddr, ResourceKey},
    run::{State, WorkflowStatus},
};

use crate::{
    action_output::{ActionKey, Progress},
    events::{Event, EventKind},
    machines::MachineTable,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Nothing seen from it yet.
    Off,
    /// Its firmware's DHCP was answered.
    Dhcp,
    /// It is fetching or running iPXE.
    Ipxe,
    /// Its script started a boot into the provisioning OS.
    ProvisioningOs,
    /// Its worker runs an action.
    Action,
    Installed,
    Failed,
}

impl Stage {
    pub const ALL: [Stage; 7] = [
        Stage::Off,
        Stage::Dhcp,
        Stage::Ipxe,
        Stage::ProvisioningOs,
        Stage::Action,
        Stage::Installed,
        Stage::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Off => "off",
            Stage::Dhcp => "dhcp",
            Stage::Ipxe => "ipxe",
            Stage::ProvisioningOs => "provisioning-os",
            Stage::Action => "action",
            Stage::Installed => "installed",
            Stage::Failed => "failed",
        }
    }
}

/// What the rack's metrics remember between two looks: each machine's stage, and since when.
pub type SeenStages = HashMap<MacAddr, (Stage, Option<u64>)>;

/// The stages each machine left since `seen`, with how long it was in each (from the time it
/// entered it to the time it entered the next); `seen` becomes what `rows` say.
pub fn left_stages(seen: &mut SeenStages, rows: &[RackRow]) -> Vec<(Stage, Duration)> {
    let mut left = Vec::new();
    for row in rows {
        let now = (row.stage, row.since_ms);
        if let Some((stage, Some(entered))) = seen.insert(row.mac, now) {
            if stage != row.stage {
                if let Some(next) = row.since_ms.filter(|next| *next >= entered) {
                    left.push((stage, Duration::from_millis(next - entered)));
                }
            }
        }
    }
    let present: std::collections::HashSet<MacAddr> = rows.iter().map(|row| row.mac).collect();
    seen.retain(|mac, _| present.contains(mac));
    left
}

/// One machine's row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RackRow {
    /// Its Hardware, `namespace/name`.
    pub name: String,
    pub mac: MacAddr,
    pub address: Option<Ipv4Addr>,
    pub stage: Stage,
    /// What the stage is about: the action (`action 2 of 4: stream-image`), the workflow, or
    /// why it failed.
    pub detail: String,
    /// Since when it is in that stage, in milliseconds since the Unix epoch.
    pub since_ms: Option<u64>,
    /// Its last event's message.
    pub last_event: Option<String>,
    /// Its current workflow, `namespace/name`.
    pub workflow: Option<String>,
    /// How far its running action is, when the action says (image2disk).
    pub progress: Option<Progress>,
}

/// Every machine's row, sorted by name.
pub fn rows(
    machines: &MachineTable,
    runs: &HashMap<ResourceKey, (ResourceKey, WorkflowStatus)>,
    last_event: impl Fn(&MacAddr) -> Option<Event>,
    progress: impl Fn(&ActionKey) -> Option<Progress>,
) -> Vec<RackRow> {
    let mut rows: Vec<RackRow> = machines
        .iter()
        .map(|machine| {
            let run = runs.get(&machine.hardware);
            let last = last_event(&machine.mac);
            let (stage, detail, since_ms) = stage_of(run, last.as_ref());
            let workflow = run.map(|(key, _)| format!("{}/{}", key.namespace, key.name));
            let running = run.and_then(|(_, status)| {
                status
                    .actions
                    .iter()
                    .position(|action| action.state == State::Running)
            });
            let progress = workflow
                .clone()
                .zip(running)
                .filter(|_| stage == Stage::Action)
                .and_then(|(workflow, action)| {
                    progress(&ActionKey {
                        workflow,
                        action: u32::try_from(action).ok()?,
                    })
                });
            RackRow {
                name: format!("{}/{}", machine.hardware.namespace, machine.hardware.name),
                mac: machine.mac,
                address: machine.address,
                stage,
                detail,
                since_ms,
                last_event: last.map(|event| event.message),
                workflow,
                progress,
            }
        })
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name).then(a.mac.cmp(&b.mac)));
    rows
}

fn ms(time: Option<SystemTime>) -> Option<u64> {
    time.and_then(|time| time.duration_since(UNIX_EPOCH).ok())
        .map(|since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

/// The stage a machine is in, what it is about, and since when: from its current run, and
/// before that run decides (it has not started, or waits between actions) from its last
/// event.
pub fn stage_of(
    run: Option<&(ResourceKey, WorkflowStatus)>,
    last: Option<&Event>,
) -> (Stage, String, Option<u64>) {
    if let Some((workflow, status)) = run {
        let name = format!("{}/{}", workflow.namespace, workflow.name);
        match status.state {
            State::Success => {
                return (
                    Stage::Installed,
                    format!("{name} succeeded"),
                    ms(status.span.finished_at),
                )
            }
            State::Failed | State::Timeout => {
                let failing = status
                    .actions
                    .iter()
                    .find(|action| matches!(action.state, State::Failed | State::Timeout));
                let why = match failing {
                    Some(action) if !action.message.is_empty() => {
                        format!("{}: {}", action.name, action.message)
                    }
                    Some(action) => format!("{} {}", action.name, action.state),
                    None => status.message.clone(),
                };
                return (
                    Stage::Failed,
                    format!("{name}: {why}"),
                    ms(status.span.finished_at),
                );
            }
            State::Running => {
                let total = status.actions.len();
                if let Some((index, action)) = status
                    .actions
                    .iter()
                    .enumerate()
                    .find(|(_, action)| action.state == State::Running)
                {
                    return (
                        Stage::Action,
                        format!("action {} of {total}: {}", index + 1, action.name),
                        ms(action.span.started_at),
                    );
                }
            }
            State::Preparing | State::Pending => {}
        }
    }
    let Some(event) = last else {
        return (Stage::Off, String::new(), None);
    };
    let since = Some(event.at_ms);
    let stage = match event.kind {
        // Pointed at its script: what answers is iPXE.
        EventKind::Dhcp if event.message.contains("auto.ipxe") => Stage::Ipxe,
        EventKind::Dhcp => Stage::Dhcp,
        EventKind::Tftp => Stage::Ipxe,
        EventKind::Script if event.message.contains("provisioning OS") => Stage::ProvisioningOs,
        EventKind::Script => Stage::Ipxe,
        EventKind::ActionHandedOut | EventKind::ActionReported => Stage::Action,
        // Its power changed: nothing on the wire from it since.
        EventKind::Power => Stage::Off,
    };
    (stage, event.message.clone(), since)
}

#[cfg(test)]
mod tests {
    use workflow::run::{ActionStatus, Span};

    use super::*;

    fn event(kind: EventKind, message: &str) -> Event {
        Event {
            at_ms: 7,
            mac: "02:00:00:00:00:01".parse().expect("a MAC"),
            kind,
            message: message.into(),
        }
    }

    fn action(name: &str, state: State, message: &str) -> ActionStatus {
        ActionStatus {
            task: "t".into(),
            worker: "w".into(),
            name: name.into(),
            image: "i".into(),
            timeout: 60,
            state,
            command: Vec::new(),
            volumes: Vec::new(),
            environment: Vec::new(),
            pid: String::new(),
            namespaces: Default::default(),
            span: Span::default(),
            duration: None,
            message: message.into(),
        }
    }

    fn run(state: State, actions: Vec<ActionStatus>) -> (ResourceKey, WorkflowStatus) {
        (
            ResourceKey {
                kind: workflow::resource::Kind::Workflow,
                namespace: "lab".into(),
                name: "wf".into(),
            },
            WorkflowStatus {
                state,
                global_timeout: 600,
                span: Span::default(),
                message: String::new(),
                actions,
            },
        )
    }

    #[test]
    fn the_boot_path_shows_in_its_events_until_the_run_decides() {
        let stage = |kind, message| stage_of(None, Some(&event(kind, message))).0;
        assert_eq!(stage_of(None, None).0, Stage::Off);
        assert_eq!(
            stage(
                EventKind::Dhcp,
                "discover → offer 10.0.0.5, boot file undionly.kpxe"
            ),
            Stage::Dhcp
        );
        assert_eq!(
            stage(
                EventKind::Dhcp,
                "request → ack 10.0.0.5, boot file http://10.0.0.1:8080/ipxe/m/auto.ipxe"
            ),
            Stage::Ipxe
        );
        assert_eq!(
            stage(EventKind::Tftp, "sending \"undionly.kpxe\""),
            Stage::Ipxe
        );
        assert_eq!(
            stage(
                EventKind::Script,
                "iPXE script served: a boot into the provisioning OS starts"
            ),
            Stage::ProvisioningOs
        );
        // A pending run does not hide where the machine is.
        let pending = run(State::Pending, vec![action("a", State::Pending, "")]);
        let dhcp = event(EventKind::Dhcp, "discover → offer 10.0.0.5");
        assert_eq!(stage_of(Some(&pending), Some(&dhcp)).0, Stage::Dhcp);
    }

    #[test]
    fn a_stage_left_is_measured_from_its_start_to_the_next_ones() {
        let row = |stage, since_ms| RackRow {
            name: "lab/m".into(),
            mac: "02:00:00:00:00:01".parse().expect("a MAC"),
            address: None,
            stage,
            detail: String::new(),
            since_ms: Some(since_ms),
            last_event: None,
            workflow: None,
            progress: None,
        };
        let mut seen = SeenStages::new();
        assert!(left_stages(&mut seen, &[row(Stage::Dhcp, 1_000)]).is_empty());
        assert!(left_stages(&mut seen, &[row(Stage::Dhcp, 1_000)]).is_empty());
        assert_eq!(
            left_stages(&mut seen, &[row(Stage::Ipxe, 4_500)]),
            [(Stage::Dhcp, Duration::from_millis(3_500))]
        );
        // A machine that is gone is forgotten.
        assert!(left_stages(&mut seen, &[]).is_empty());
        assert!(seen.is_empty());
    }

    #[test]
    fn the_run_says_which_action_runs_and_how_it_ended() {
        let running = run(
            State::Running,
            vec![
                action("stream", State::Success, ""),
                action("grow", State::Running, ""),
                action("netplan", State::Pending, ""),
            ],
        );
        let (stage, detail, _) = stage_of(Some(&running), None);
        assert_eq!(
            (stage, detail.as_str()),
            (Stage::Action, "action 2 of 3: grow")
        );
        let failed = run(
            State::Failed,
            vec![
                action("stream", State::Success, ""),
                action("grow", State::Failed, "exit status: 2: no sfdisk"),
            ],
        );
        let (stage, detail, _) = stage_of(Some(&failed), None);
        assert_eq!(stage, Stage::Failed);
        assert_eq!(detail, "lab/wf: grow: exit status: 2: no sfdisk");
        let done = run(State::Success, vec![action("stream", State::Success, "")]);
        assert_eq!(stage_of(Some(&done), None).0, Stage::Installed);
    }
}
