//! What a Task needs of a BMC, whichever protocol reaches it, and the errors that decide whether
//! trying again can help.
use std::time::Duration;

use workflow::resource::bmc::{BootDevice, PowerAction, PowerState, Provider};

/// Why a BMC request failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BmcError {
    /// No answer, or no route, before any request reached the BMC: nothing was done, and the
    /// request may be tried again.
    #[error("{0}")]
    Unreachable(String),
    /// The request may have reached the BMC before the answer was lost. A request that changes
    /// nothing twice (a power state, `on`, a boot device) may be tried again; a cycle or a
    /// reset may not.
    #[error("{0}")]
    Uncertain(String),
    /// The BMC answered and refused: wrong credentials, or a request it cannot do. Trying
    /// again would not help.
    #[error("{0}")]
    Refused(String),
}

pub type BmcResult<T> = Result<T, BmcError>;

/// The username and password of a Machine's `authSecretRef`.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Credentials {{ username: {:?}, password: <redacted> }}",
            self.username
        )
    }
}

/// One way of talking to one BMC. Calls block (they run on the blocking pool) and each ends
/// within [`REQUEST_LIMIT`].
pub trait Bmc: Send + Sync {
    fn provider(&self) -> Provider;
    fn power_state(&self) -> BmcResult<PowerState>;
    fn power(&self, action: PowerAction) -> BmcResult<()>;
    fn boot_device(&self, device: BootDevice, persistent: bool, efi_boot: bool) -> BmcResult<()>;
    /// Inserts `url` as virtual media of `kind` (`CD`), or ejects it (`None`).
    fn virtual_media(&self, kind: &str, url: Option<&str>) -> BmcResult<()>;
}

/// How long one request to a BMC may take, retries inside the protocol included.
pub const REQUEST_LIMIT: Duration = Duration::from_secs(30);
