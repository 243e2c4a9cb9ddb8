//! A workflow's run: the plan its template renders to, and the status of each action as the
//! worker reports it. Pure data and the rules of the state machine, over a clock passed in;
//! below the store, which persists runs, and the engine, which drives them.
pub mod boot;
pub mod plan;
pub mod status;

pub use self::{
    boot::BootStatus,
    plan::Plan,
    status::{ActionStatus, Report, ReportError, Span, State, WorkflowStatus},
};
