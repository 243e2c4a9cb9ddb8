//! A workflow's run: its state, and each action's state, times and message. Pure logic over a
//! clock passed in, so that every transition and timeout is testable without waiting.
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::plan::{self, Namespaces, Plan};

/// Tinkerbell's states, with the names its API and CLI use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    /// Its `bootOptions` are being carried out (the Hardware toggled, the BMC Job run); no
    /// action is handed out yet.
    Preparing,
    Pending,
    Running,
    Success,
    Failed,
    Timeout,
}

impl State {
    pub fn is_final(self) -> bool {
        matches!(self, State::Success | State::Failed | State::Timeout)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Preparing => "PREPARING",
            State::Pending => "PENDING",
            State::Running => "RUNNING",
            State::Success => "SUCCESS",
            State::Failed => "FAILED",
            State::Timeout => "TIMEOUT",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How long past an action's own timeout the server waits for the worker's report before it
/// declares the timeout itself: the worker enforces the timeout first and says so.
pub const REPORT_GRACE: Duration = Duration::from_secs(10);

/// When a workflow or an action started and finished; each is unset until it happens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Span {
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub started_at: Option<SystemTime>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub finished_at: Option<SystemTime>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowStatus {
    pub state: State,
    pub global_timeout: u64,
    #[serde(flatten)]
    pub span: Span,
    /// Why the workflow ended, when it did not succeed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    pub actions: Vec<ActionStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionStatus {
    pub task: String,
    pub worker: String,
    pub name: String,
    pub image: String,
    pub timeout: u64,
    pub state: State,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environment: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pid: String,
    #[serde(default, skip_serializing_if = "Namespaces::is_empty")]
    pub namespaces: Namespaces,
    #[serde(flatten)]
    pub span: Span,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub duration: Option<Duration>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// A worker's report on an action.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub action: usize,
    pub state: State,
    pub message: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("the workflow is already {0}")]
    Finished(State),
    #[error("action {got} is not the current action ({expected:?})")]
    NotCurrent { got: usize, expected: Option<usize> },
    #[error("{0} is not a state a worker reports")]
    BadState(State),
}

impl WorkflowStatus {
    /// A workflow nobody has started, with every action of its plan pending.
    pub fn new(plan: &Plan) -> WorkflowStatus {
        WorkflowStatus {
            state: State::Pending,
            global_timeout: plan.global_timeout,
            span: Span::default(),
            message: String::new(),
            actions: plan
                .actions()
                .map(|(task, action)| ActionStatus {
                    task: task.name.clone(),
                    worker: task.worker.clone(),
                    name: action.name.clone(),
                    image: action.image.clone(),
                    timeout: action.timeout,
                    state: State::Pending,
                    command: action.command.clone(),
                    volumes: task
                        .volumes
                        .iter()
                        .chain(&action.volumes)
                        .cloned()
                        .collect(),
                    environment: plan::environment(task, action),
                    pid: action.effective_pid().to_string(),
                    namespaces: action.namespaces.clone(),
                    span: Span::default(),
                    duration: None,
                    message: String::new(),
                })
                .collect(),
        }
    }

    /// A workflow that could not start, such as one whose template no longer renders.
    pub fn failed_to_start(message: String, now: SystemTime) -> WorkflowStatus {
        WorkflowStatus {
            state: State::Failed,
            global_timeout: 0,
            span: Span {
                started_at: None,
                finished_at: Some(now),
            },
            message,
            actions: Vec::new(),
        }
    }

    /// The first action that has not succeeded, while the workflow runs.
    pub fn current(&self) -> Option<usize> {
        if self.state.is_final() {
            return None;
        }
        self.actions
            .iter()
            .position(|action| action.state != State::Success)
    }

    /// How many actions have succeeded.
    pub fn done(&self) -> usize {
        self.actions
            .iter()
            .filter(|action| action.state == State::Success)
            .count()
    }

    /// Hands out the current action. An action already running is handed out again: its worker
    /// restarted (the machine rebooted, say) and runs it anew, within what is left of its
    /// timeout, which runs from its first start.
    pub fn start_current(&mut self, now: SystemTime) -> Option<usize> {
        let current = self.current()?;
        self.state = State::Running;
        self.span.started_at.get_or_insert(now);
        let action = &mut self.actions[current];
        action.state = State::Running;
        // Handing the running action out again (a worker asking twice, or after a restart)
        // keeps its start: its timeout runs from when it first started.
        action.span.started_at.get_or_insert(now);
        Some(current)
    }

    /// Applies a worker's report. A repeat of the report that finished an action (a retry after
    /// a lost reply) is accepted and changes nothing.
    pub fn apply(&mut self, report: &Report, now: SystemTime) -> Result<(), ReportError> {
        if let Some(done) = self.actions.get(report.action) {
            if done.state.is_final() && done.state == report.state {
                return Ok(());
            }
        }
        if self.state.is_final() {
            return Err(ReportError::Finished(self.state));
        }
        let current = self.current();
        if current != Some(report.action) {
            return Err(ReportError::NotCurrent {
                got: report.action,
                expected: current,
            });
        }
        match report.state {
            State::Running => {
                self.state = State::Running;
                self.span.started_at.get_or_insert(now);
                let action = &mut self.actions[report.action];
                action.state = State::Running;
                action.span.started_at.get_or_insert(now);
                action.message.clone_from(&report.message);
            }
            State::Success | State::Failed | State::Timeout => {
                self.finish_action(report.action, report.state, report.message.clone(), now);
            }
            State::Preparing | State::Pending => return Err(ReportError::BadState(report.state)),
        }
        Ok(())
    }

    /// Ends the workflow when the global timeout or the running action's timeout (plus
    /// [`REPORT_GRACE`]) has passed. Returns whether it did.
    pub fn enforce_timeouts(&mut self, now: SystemTime) -> bool {
        if self.state != State::Running {
            return false;
        }
        let Some(current) = self.current() else {
            return false;
        };
        let overdue = |since: Option<SystemTime>, seconds: u64, grace: Duration| {
            // 0 means no limit; one too large to add up is never reached.
            let limit = match Duration::from_secs(seconds).checked_add(grace) {
                Some(limit) if seconds > 0 => limit,
                _ => return false,
            };
            since.is_some_and(|since| now.duration_since(since).unwrap_or_default() >= limit)
        };
        let message = if overdue(self.span.started_at, self.global_timeout, Duration::ZERO) {
            format!(
                "the workflow's global_timeout of {} s has passed",
                self.global_timeout
            )
        } else {
            let action = &self.actions[current];
            if action.state != State::Running
                || !overdue(action.span.started_at, action.timeout, REPORT_GRACE)
            {
                return false;
            }
            format!(
                "no report from the worker within the action's timeout of {} s",
                action.timeout
            )
        };
        self.finish_action(current, State::Timeout, message, now);
        true
    }

    fn finish_action(&mut self, index: usize, state: State, message: String, now: SystemTime) {
        let action = &mut self.actions[index];
        action.state = state;
        let started = *action.span.started_at.get_or_insert(now);
        action.span.finished_at = Some(now);
        action.duration = Some(now.duration_since(started).unwrap_or_default());
        action.message = message;
        let summary = format!("action {:?}: {}", action.name, action.message);
        let last = index + 1 == self.actions.len();
        self.state = match state {
            State::Success if last => State::Success,
            State::Success => State::Running,
            other => other,
        };
        if self.state.is_final() {
            self.span.finished_at = Some(now);
            if state != State::Success {
                self.message = summary;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run of [`plan`] whose first action started at 0.
    fn started() -> WorkflowStatus {
        let mut status = WorkflowStatus::new(&plan());
        status.start_current(at(0));
        status
    }

    /// The workflow ended in `state`, and its message says why.
    fn assert_ended(status: &WorkflowStatus, state: State, why: &str) {
        assert_eq!(status.state, state);
        assert!(status.message.contains(why), "{}", status.message);
    }

    fn plan() -> Plan {
        Plan::parse(
            "global_timeout: 100\ntasks:\n  - name: t\n    worker: w\n    actions:\n      - {name: a, image: i, timeout: 10}\n      - {name: b, image: i, timeout: 0}\n",
        )
        .unwrap()
    }

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + seconds)
    }

    fn report(action: usize, state: State) -> Report {
        Report {
            action,
            state,
            message: format!("{state}"),
        }
    }

    #[test]
    fn runs_every_action_to_success() {
        let mut status = WorkflowStatus::new(&plan());
        assert_eq!(status.state, State::Pending);
        assert_eq!(status.start_current(at(0)), Some(0));
        assert_eq!(status.state, State::Running);
        status.apply(&report(0, State::Running), at(1)).unwrap();
        status.apply(&report(0, State::Success), at(4)).unwrap();
        assert_eq!(status.actions[0].duration, Some(Duration::from_secs(4)));
        assert_eq!((status.state, status.done()), (State::Running, 1));
        assert_eq!(status.start_current(at(5)), Some(1));
        status.apply(&report(1, State::Success), at(6)).unwrap();
        assert_eq!(status.state, State::Success);
        assert_eq!(status.span.finished_at, Some(at(6)));
        assert_eq!(status.current(), None);
        assert_eq!(status.start_current(at(7)), None);
        // The retried last report is harmless; anything else is refused.
        status.apply(&report(1, State::Success), at(8)).unwrap();
        assert_eq!(
            status.apply(&report(1, State::Failed), at(8)),
            Err(ReportError::Finished(State::Success))
        );
    }

    #[test]
    fn a_failed_action_fails_the_workflow_with_its_message() {
        let mut status = started();
        let failed = Report {
            action: 0,
            state: State::Failed,
            message: "exit status 3: no such disk".into(),
        };
        status.apply(&failed, at(2)).unwrap();
        assert_ended(&status, State::Failed, "no such disk");
        assert_eq!(status.actions[1].state, State::Pending);
    }

    #[test]
    fn reports_must_name_the_current_action() {
        let mut status = started();
        assert_eq!(
            status.apply(&report(1, State::Success), at(1)),
            Err(ReportError::NotCurrent {
                got: 1,
                expected: Some(0)
            })
        );
        assert_eq!(
            status.apply(&report(0, State::Pending), at(1)),
            Err(ReportError::BadState(State::Pending))
        );
        assert_eq!(status.done(), 0);
    }

    #[test]
    fn handing_the_action_out_again_keeps_its_start() {
        let mut status = started();
        assert_eq!(status.start_current(at(8)), Some(0));
        assert_eq!(status.actions[0].span.started_at, Some(at(0)));
        assert!(
            status.enforce_timeouts(at(20)),
            "10 s and the grace, from 0"
        );
    }

    #[test]
    fn the_server_times_out_a_silent_action_after_the_grace() {
        let mut status = started();
        assert!(!status.enforce_timeouts(at(10)));
        assert!(!status.enforce_timeouts(at(19)));
        assert!(status.enforce_timeouts(at(20)));
        assert_ended(&status, State::Timeout, "timeout of 10 s");
        assert_eq!(status.actions[0].state, State::Timeout);
    }

    #[test]
    fn the_global_timeout_ends_a_workflow_whose_actions_have_none() {
        let mut status = started();
        status.apply(&report(0, State::Success), at(5)).unwrap();
        status.start_current(at(6));
        let ends = |now| status.clone().enforce_timeouts(at(now));
        assert_eq!((ends(99), ends(100)), (false, true));
        status.enforce_timeouts(at(100));
        assert_ended(&status, State::Timeout, "global_timeout of 100 s");
        assert_eq!(status.actions[1].state, State::Timeout);
    }

    #[test]
    fn a_pending_workflow_never_times_out_and_statuses_round_trip() {
        let mut status = WorkflowStatus::new(&plan());
        assert!(!status.enforce_timeouts(at(1_000_000)));
        status.actions[0].timeout = u64::MAX;
        status.global_timeout = u64::MAX;
        status.start_current(at(0));
        assert!(
            !status.enforce_timeouts(at(1_000_000)),
            "huge timeouts never pass"
        );
        status.actions[0].timeout = 10;
        status.global_timeout = 100;
        status.start_current(at(0));
        let json = serde_json::to_string(&status).unwrap();
        assert!(json.contains("\"state\":\"RUNNING\""), "{json}");
        let back: WorkflowStatus = serde_json::from_str(&json).unwrap();
        assert_eq!(back, status);
    }
}
