//! Tinkerbell's worker API (`proto.WorkflowService`), generated from `proto/`, and the few
//! conventions on top of it that the appliance and the worker share.
mod generated {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("proto");
}
pub use generated::*;

use tonic::Code;

/// The metadata key of the worker API's `NOT_FOUND` answer that carries the state of the
/// machine's most recently finished workflow (`SUCCESS`, `FAILED`, `TIMEOUT`). Tinkerbell's
/// protocol has no "done"; this lets a worker reboot only after a success.
pub const WORKFLOW_STATE_KEY: &str = "wisp-workflow-state";

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
