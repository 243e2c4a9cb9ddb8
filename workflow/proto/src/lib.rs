//! Tinkerbell's worker API (`proto.WorkflowService`), generated from `proto/`, the few
//! conventions on top of it that the appliance and the worker share, and Wisp's one addition
//! (`wisp.v1.ActionOutput`).
mod generated {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("proto");
}
pub use generated::{action_status_request::StateType, *};

/// Wisp's addition to the worker API (`wisp.v1.ActionOutput`): a running action's output and
/// progress.
pub mod output {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("wisp.v1");
}

use std::time::SystemTime;

use tonic::Code;

/// The metadata key of the worker API's `NOT_FOUND` answer that carries the state of the
/// machine's most recently finished workflow (`SUCCESS`, `FAILED`, `TIMEOUT`). Tinkerbell's
/// protocol has no "done"; this lets a worker reboot only after a success.
pub const WORKFLOW_STATE_KEY: &str = "wisp-workflow-state";

impl ActionStatusRequest {
    /// A worker's report on `action`, which it started at `started`: its state, and the times
    /// Tinkerbell's agent sends with it.
    pub fn about(
        action: &ActionResponse,
        agent_id: &str,
        state: StateType,
        started: SystemTime,
        message: Option<String>,
    ) -> ActionStatusRequest {
        let now = SystemTime::now();
        ActionStatusRequest {
            workflow_id: action.workflow_id.clone(),
            agent_id: Some(agent_id.to_string()),
            task_id: action.task_id.clone(),
            action_id: action.action_id.clone(),
            action_name: action.name.clone(),
            action_state: Some(state as i32),
            execution_start: Some(started.into()),
            execution_stop: (state != StateType::Running).then(|| now.into()),
            execution_duration: Some(format!(
                "{:.3}s",
                now.duration_since(started)
                    .unwrap_or_default()
                    .as_secs_f64()
            )),
            message: message.map(|message| ActionMessage {
                message: Some(message),
            }),
        }
    }
}

/// The longest line of an action's output that is sent and kept, in bytes.
pub const MAX_OUTPUT_LINE: usize = 512;

/// `line` cut to [`MAX_OUTPUT_LINE`] bytes (on a character boundary), with a mark that it was.
pub fn output_line(line: &str) -> String {
    if line.len() <= MAX_OUTPUT_LINE {
        return line.to_string();
    }
    let mut end = MAX_OUTPUT_LINE;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} …", &line[..end])
}

/// Whether a failed call is worth retrying: the server is away, restarting or overloaded, or
/// the connection closed under the call (tonic's CANCELLED), rather than refusing the call.
pub fn transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Cancelled
            | Code::Unknown
            | Code::Internal
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_connection_is_retried_and_a_refusal_is_not() {
        // hyper's "connection closed" reaches the caller as CANCELLED: a server restart or a
        // dropped connection must not end an install.
        for code in [Code::Cancelled, Code::Unavailable, Code::DeadlineExceeded] {
            assert!(transient(code), "{code:?}");
        }
        for code in [
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::InvalidArgument,
            Code::NotFound,
        ] {
            assert!(!transient(code), "{code:?}");
        }
    }
}
