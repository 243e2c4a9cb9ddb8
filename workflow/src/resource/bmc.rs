//! Tinkerbell's BMC kinds (`bmc.tinkerbell.org/v1alpha1`): Machine, Job and Task, spelled as in
//! Tinkerbell's `api/v1alpha1/bmc` so that its users' manifests apply unchanged.
//!
//! A Machine says how to reach a BMC; a Job is a list of actions for one Machine; a Task is one
//! action of a Job, run against the connection copied from the Machine when it was created.
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::FieldError;

pub const API_VERSION: &str = "bmc.tinkerbell.org/v1alpha1";

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct MachineSpec {
    pub connection: Connection,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    pub host: String,
    /// IPMI's port; Redfish takes its own from `providerOptions.redfish.port`.
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default)]
    pub auth_secret_ref: SecretReference,
    #[serde(rename = "insecureTLS", default)]
    pub insecure_tls: bool,
    pub provider_options: Option<ProviderOptions>,
}

fn default_port() -> u16 {
    623
}

/// Kubernetes' `corev1.SecretReference`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct SecretReference {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ProviderOptions {
    pub preferred_order: Vec<String>,
    pub ipmitool: Option<IpmitoolOptions>,
    pub redfish: Option<RedfishOptions>,
    // Providers Wisp does not drive: kept, and named in a warning when set.
    #[serde(rename = "intelAMT")]
    pub intel_amt: Option<Value>,
    pub rpc: Option<Value>,
    pub homeassistant: Option<Value>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct IpmitoolOptions {
    pub port: Option<u16>,
    /// A string in Tinkerbell's API (`"3"`), passed to `ipmitool -C`.
    pub cipher_suite: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct RedfishOptions {
    pub port: Option<u16>,
    pub use_basic_auth: bool,
    pub system_name: Option<String>,
}

/// A BMC provider, by the names of Tinkerbell's `preferredOrder` (bmclib's drivers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    /// IPMI v2.0 over LAN (RMCP+), through `ipmitool`.
    Ipmitool,
    /// Redfish (bmclib's driver is named after the gofish library).
    Redfish,
}

impl Provider {
    pub const fn name(self) -> &'static str {
        match self {
            Provider::Ipmitool => "ipmitool",
            Provider::Redfish => "gofish",
        }
    }
}

/// The providers Tinkerbell's API names that Wisp does not implement; a `preferredOrder` may
/// list them, and they are skipped with a warning.
const OTHER_PROVIDERS: &[&str] = &["asrockrack", "intelamt", "dell", "supermicro", "openbmc"];

impl ProviderOptions {
    /// The order to try providers in: `preferredOrder`'s, then the rest in Tinkerbell's default
    /// order (ipmitool first).
    pub fn order(&self) -> Vec<Provider> {
        let mut order: Vec<Provider> = self
            .preferred_order
            .iter()
            .filter_map(|name| provider(name))
            .collect();
        for provider in [Provider::Ipmitool, Provider::Redfish] {
            if !order.contains(&provider) {
                order.push(provider);
            }
        }
        order.dedup();
        order
    }
}

fn provider(name: &str) -> Option<Provider> {
    match name.to_ascii_lowercase().as_str() {
        "ipmitool" => Some(Provider::Ipmitool),
        "gofish" | "redfish" => Some(Provider::Redfish),
        _ => None,
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobSpec {
    pub machine_ref: MachineRef,
    pub tasks: Vec<Action>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct MachineRef {
    pub name: String,
    pub namespace: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct TaskSpec {
    pub task: Action,
    /// Copied from the Machine when the Job created the Task.
    pub connection: Option<Connection>,
}

/// One BMC action; exactly one field is set.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Action {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub power_action: Option<PowerAction>,
    /// Deprecated by Tinkerbell in favour of `bootDevice`, and still what its netboot uses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub one_time_boot_device_action: Option<OneTimeBootDeviceAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_device: Option<BootDeviceConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virtual_media_action: Option<VirtualMediaAction>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PowerAction {
    On,
    Off,
    Soft,
    Status,
    Cycle,
    Reset,
}

impl PowerAction {
    pub const fn as_str(self) -> &'static str {
        match self {
            PowerAction::On => "on",
            PowerAction::Off => "off",
            PowerAction::Soft => "soft",
            PowerAction::Status => "status",
            PowerAction::Cycle => "cycle",
            PowerAction::Reset => "reset",
        }
    }

    /// The state the machine must reach for the action to be done, when it has one.
    pub const fn target(self) -> Option<PowerState> {
        match self {
            PowerAction::On => Some(PowerState::On),
            PowerAction::Off | PowerAction::Soft => Some(PowerState::Off),
            PowerAction::Status | PowerAction::Cycle | PowerAction::Reset => None,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PowerState {
    On,
    Off,
    Unknown,
}

impl PowerState {
    pub const fn as_str(self) -> &'static str {
        match self {
            PowerState::On => "on",
            PowerState::Off => "off",
            PowerState::Unknown => "unknown",
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BootDevice {
    Pxe,
    Disk,
    Bios,
    Cdrom,
    Safe,
}

impl BootDevice {
    pub const fn as_str(self) -> &'static str {
        match self {
            BootDevice::Pxe => "pxe",
            BootDevice::Disk => "disk",
            BootDevice::Bios => "bios",
            BootDevice::Cdrom => "cdrom",
            BootDevice::Safe => "safe",
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OneTimeBootDeviceAction {
    /// A list in Tinkerbell's API, of which only the first is used.
    pub device: Vec<BootDevice>,
    #[serde(default)]
    pub efi_boot: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BootDeviceConfig {
    pub device: BootDevice,
    #[serde(default)]
    pub persistent: bool,
    #[serde(default)]
    pub efi_boot: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMediaAction {
    /// Empty ejects the media.
    #[serde(default, rename = "mediaURL")]
    pub media_url: String,
    pub kind: String,
}

/// What one action does, once validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Power(PowerAction),
    BootDevice {
        device: BootDevice,
        persistent: bool,
        efi_boot: bool,
    },
    /// Insert (`Some(url)`) or eject (`None`) virtual media of `kind` (`CD`).
    VirtualMedia {
        kind: String,
        url: Option<String>,
    },
}

impl Action {
    /// The one thing this action does; `path` names the action in errors.
    pub fn step(&self, path: &str) -> Result<Step, FieldError> {
        let set = [
            self.power_action.is_some(),
            self.one_time_boot_device_action.is_some(),
            self.boot_device.is_some(),
            self.virtual_media_action.is_some(),
        ]
        .into_iter()
        .filter(|set| *set)
        .count();
        if set != 1 {
            return Err(FieldError::new(
                path,
                format!("must set exactly one of powerAction, oneTimeBootDeviceAction, bootDevice and virtualMediaAction ({set} set)"),
            ));
        }
        if let Some(power) = self.power_action {
            return Ok(Step::Power(power));
        }
        if let Some(one_time) = &self.one_time_boot_device_action {
            let device = *one_time.device.first().ok_or_else(|| {
                FieldError::new(
                    format!("{path}.oneTimeBootDeviceAction.device"),
                    "must name a boot device",
                )
            })?;
            return Ok(Step::BootDevice {
                device,
                persistent: false,
                efi_boot: one_time.efi_boot,
            });
        }
        if let Some(config) = &self.boot_device {
            return Ok(Step::BootDevice {
                device: config.device,
                persistent: config.persistent,
                efi_boot: config.efi_boot,
            });
        }
        let media = self.virtual_media_action.as_ref().expect("counted above");
        Ok(Step::VirtualMedia {
            kind: media.kind.clone(),
            url: (!media.media_url.is_empty()).then(|| media.media_url.clone()),
        })
    }
}

impl MachineSpec {
    /// Checks what serde cannot; returns what Wisp keeps but will not act on, as warnings.
    pub fn validate(&self) -> Result<Vec<FieldError>, FieldError> {
        let connection = &self.connection;
        if connection.host.trim().is_empty() {
            return Err(FieldError::new("spec.connection.host", "is required"));
        }
        let mut warnings = Vec::new();
        if connection.auth_secret_ref.name.is_empty() {
            return Err(FieldError::new(
                "spec.connection.authSecretRef.name",
                "is required: the Secret holding the BMC's username and password",
            ));
        }
        if let Some(options) = &connection.provider_options {
            for (index, name) in options.preferred_order.iter().enumerate() {
                let path = format!("spec.connection.providerOptions.preferredOrder[{index}]");
                if provider(name).is_none() {
                    if OTHER_PROVIDERS.contains(&name.to_ascii_lowercase().as_str()) {
                        warnings.push(FieldError::new(
                            path,
                            format!("{name:?} is a provider Wisp does not implement; it is skipped (Wisp drives ipmitool and gofish, Redfish)"),
                        ));
                    } else {
                        return Err(FieldError::new(
                            path,
                            format!("{name:?} is not a BMC provider (ipmitool, gofish, asrockrack, IntelAMT, dell, supermicro, openbmc)"),
                        ));
                    }
                }
            }
            for (set, name) in [
                (options.intel_amt.is_some(), "intelAMT"),
                (options.rpc.is_some(), "rpc"),
                (options.homeassistant.is_some(), "homeassistant"),
            ] {
                if set {
                    warnings.push(FieldError::new(
                        format!("spec.connection.providerOptions.{name}"),
                        "a provider Wisp does not implement: kept, not used",
                    ));
                }
            }
        }
        Ok(warnings)
    }
}

impl JobSpec {
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.machine_ref.name.is_empty() {
            return Err(FieldError::new("spec.machineRef.name", "is required"));
        }
        if self.machine_ref.namespace.is_empty() {
            return Err(FieldError::new("spec.machineRef.namespace", "is required"));
        }
        if self.tasks.is_empty() {
            return Err(FieldError::new(
                "spec.tasks",
                "must hold at least one action",
            ));
        }
        for (index, action) in self.tasks.iter().enumerate() {
            action.step(&format!("spec.tasks[{index}]"))?;
        }
        Ok(())
    }
}

impl TaskSpec {
    pub fn validate(&self) -> Result<(), FieldError> {
        self.task.step("spec.task").map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(json: &str) -> Action {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn an_action_is_exactly_one_thing() {
        assert_eq!(
            action(r#"{"powerAction": "cycle"}"#).step("t"),
            Ok(Step::Power(PowerAction::Cycle))
        );
        assert_eq!(
            action(r#"{"oneTimeBootDeviceAction": {"device": ["pxe", "disk"], "efiBoot": true}}"#)
                .step("t"),
            Ok(Step::BootDevice {
                device: BootDevice::Pxe,
                persistent: false,
                efi_boot: true
            })
        );
        assert_eq!(
            action(r#"{"virtualMediaAction": {"mediaURL": "", "kind": "CD"}}"#).step("t"),
            Ok(Step::VirtualMedia {
                kind: "CD".into(),
                url: None
            })
        );
        let two = action(r#"{"powerAction": "on", "bootDevice": {"device": "pxe"}}"#)
            .step("spec.tasks[1]")
            .unwrap_err();
        assert_eq!(two.path, "spec.tasks[1]");
        assert!(two.message.contains("exactly one"), "{two}");
        let none = action(r#"{"oneTimeBootDeviceAction": {"device": []}}"#)
            .step("spec.tasks[0]")
            .unwrap_err();
        assert_eq!(none.path, "spec.tasks[0].oneTimeBootDeviceAction.device");
    }

    #[test]
    fn providers_follow_the_preferred_order_then_the_default() {
        let options: ProviderOptions =
            serde_json::from_str(r#"{"preferredOrder": ["gofish", "dell"]}"#).unwrap();
        assert_eq!(options.order(), [Provider::Redfish, Provider::Ipmitool]);
        assert_eq!(
            ProviderOptions::default().order(),
            [Provider::Ipmitool, Provider::Redfish]
        );
    }
}
