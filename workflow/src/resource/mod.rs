//! The resource kinds, in Tinkerbell's shapes: Hardware, Template and Workflow
//! (`tinkerbell.org/v1alpha1`), the BMC kinds Machine, Job and Task (`bmc.tinkerbell.org/v1alpha1`),
//! and Kubernetes' `v1` Secret for BMC credentials.
//!
//! A resource is kept as the JSON object the user wrote (unknown fields included, so nothing a
//! user wrote is lost), and decoded into typed specs when Wisp acts on it.
mod addr;
pub mod bmc;
pub mod hardware;
mod mac;
pub mod secret;
pub mod template;
pub mod workflow;

use std::{collections::BTreeMap, fmt};

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::Value;

pub use addr::Ipv4;
pub use bmc::{JobSpec, MachineSpec, TaskSpec};
pub use hardware::HardwareSpec;
pub use mac::{MacAddr, MacParseError};
pub use secret::SecretData;
pub use template::TemplateSpec;
pub use workflow::{WorkflowRuleSetSpec, WorkflowSpec};

pub const API_VERSION: &str = "tinkerbell.org/v1alpha1";
/// The namespace of a resource that names none, as in Kubernetes.
pub const DEFAULT_NAMESPACE: &str = "default";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    Hardware,
    Template,
    Workflow,
    Machine,
    Job,
    Task,
    Secret,
    WorkflowRuleSet,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Hardware,
        Kind::Template,
        Kind::Workflow,
        Kind::Machine,
        Kind::Job,
        Kind::Task,
        Kind::Secret,
        Kind::WorkflowRuleSet,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Hardware => "Hardware",
            Kind::Template => "Template",
            Kind::Workflow => "Workflow",
            Kind::Machine => "Machine",
            Kind::Job => "Job",
            Kind::Task => "Task",
            Kind::Secret => "Secret",
            Kind::WorkflowRuleSet => "WorkflowRuleSet",
        }
    }

    /// The `apiVersion` documents of this kind carry.
    pub const fn api_version(self) -> &'static str {
        match self {
            Kind::Hardware | Kind::Template | Kind::Workflow | Kind::WorkflowRuleSet => API_VERSION,
            Kind::Machine | Kind::Job | Kind::Task => bmc::API_VERSION,
            Kind::Secret => secret::API_VERSION,
        }
    }

    /// The lower-case plural used in URLs and on the command line.
    pub const fn plural(self) -> &'static str {
        match self {
            Kind::Hardware => "hardware",
            Kind::Template => "templates",
            Kind::Workflow => "workflows",
            Kind::Machine => "machines",
            Kind::Job => "jobs",
            Kind::Task => "tasks",
            Kind::Secret => "secrets",
            Kind::WorkflowRuleSet => "workflowrulesets",
        }
    }

    /// Accepts what kubectl users type: singular, plural and Tinkerbell's short names.
    pub fn from_user(text: &str) -> Option<Kind> {
        match text.to_ascii_lowercase().as_str() {
            "hardware" | "hardwares" | "hw" => Some(Kind::Hardware),
            "template" | "templates" | "tpl" => Some(Kind::Template),
            "workflow" | "workflows" | "wf" => Some(Kind::Workflow),
            "machine" | "machines" => Some(Kind::Machine),
            "job" | "jobs" | "j" => Some(Kind::Job),
            "task" | "tasks" | "t" => Some(Kind::Task),
            "secret" | "secrets" => Some(Kind::Secret),
            "workflowruleset" | "workflowrulesets" | "wrs" => Some(Kind::WorkflowRuleSet),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a resource lives: its kind, namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ResourceKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// A stored resource: the object as written, with `metadata.resourceVersion` set by the store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    pub key: ResourceKey,
    /// Increases on every change; optimistic concurrency compares it.
    pub version: u64,
    pub object: Value,
}

impl Resource {
    /// The typed spec. Stored objects were validated on apply, so an error here means the
    /// store holds something this version of Wisp does not understand.
    pub fn spec<S: DeserializeOwned>(&self) -> Result<S, FieldError> {
        let spec = self.object.get("spec").cloned().unwrap_or(Value::Null);
        serde_path_to_error::deserialize(spec)
            .map_err(|err| FieldError::from_path_error("spec", err))
    }
}

/// A problem with one field of a document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FieldError {
    /// Dotted path with indices, such as `spec.interfaces[0].dhcp.mac`.
    pub path: String,
    pub message: String,
}

impl FieldError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            path: path.into(),
            message: message.into(),
        }
    }

    fn from_path_error(prefix: &str, err: serde_path_to_error::Error<serde_json::Error>) -> Self {
        let inner = err.path().to_string();
        let mut path = match inner.as_str() {
            "." => prefix.to_string(),
            _ if prefix.is_empty() => inner,
            _ => format!("{prefix}.{inner}"),
        };
        let mut message = err.into_inner().to_string();
        // serde says "missing field `x`" at the parent; name the field itself instead.
        if let Some(field) = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'))
        {
            path = if path.is_empty() {
                field.to_string()
            } else {
                format!("{path}.{field}")
            };
            message = "is required".to_string();
        }
        FieldError { path, message }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub resource_version: Option<String>,
    // Written by Kubernetes; accepted so that `kubectl get -o yaml` output applies.
    pub uid: Option<Value>,
    pub creation_timestamp: Option<Value>,
    pub generation: Option<Value>,
    pub finalizers: Option<Value>,
    pub owner_references: Option<Value>,
    pub managed_fields: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<S> {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: ObjectMeta,
    spec: S,
    #[allow(dead_code)]
    status: Option<Value>,
}

/// A Secret has no spec: its data sits beside its metadata.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SecretEnvelope {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: ObjectMeta,
    #[serde(default)]
    data: BTreeMap<String, String>,
    #[serde(rename = "type")]
    secret_type: Option<String>,
    immutable: Option<bool>,
}

/// The typed spec of a decoded document.
#[derive(Clone, Debug)]
pub enum Spec {
    Hardware(HardwareSpec),
    Template(TemplateSpec),
    Workflow(WorkflowSpec),
    Machine(MachineSpec),
    Job(JobSpec),
    Task(TaskSpec),
    Secret(SecretData),
    WorkflowRuleSet(WorkflowRuleSetSpec),
}

/// A document that passed validation.
#[derive(Clone, Debug)]
pub struct Decoded {
    pub key: ResourceKey,
    pub spec: Spec,
    /// The object as written, unknown fields included.
    pub object: Value,
    /// `metadata.resourceVersion`, when the writer asks for optimistic concurrency.
    pub expected_version: Option<u64>,
    /// Unknown fields, kept but not understood.
    pub warnings: Vec<FieldError>,
}

/// Validates one document.
pub fn decode(object: Value) -> Result<Decoded, FieldError> {
    if !object.is_object() {
        return Err(FieldError::new(".", "a resource must be a mapping"));
    }
    let text_field = |field: &str| match object.get(field) {
        None | Some(Value::Null) => Err(FieldError::new(field, "is required")),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(other) => Err(FieldError::new(
            field,
            format!("must be a string, not {other}"),
        )),
    };
    let api_version = text_field("apiVersion")?;
    let kind_text = text_field("kind")?;
    let kind = Kind::ALL
        .into_iter()
        .find(|kind| kind.as_str() == kind_text)
        .ok_or_else(|| {
            FieldError::new(
                "kind",
                format!("{kind_text:?} is not a resource kind (Hardware, Template, Workflow, WorkflowRuleSet, Machine, Job, Task or Secret)"),
            )
        })?;
    if api_version != kind.api_version() {
        return Err(FieldError::new(
            "apiVersion",
            format!(
                "{api_version:?} is not supported for {kind} (use {:?})",
                kind.api_version()
            ),
        ));
    }
    let mut object = object;
    let mut warnings = Vec::new();
    let (metadata, spec) = match kind {
        Kind::Hardware => typed(&object, &mut warnings, Spec::Hardware)?,
        Kind::Template => typed(&object, &mut warnings, Spec::Template)?,
        Kind::Workflow => typed(&object, &mut warnings, Spec::Workflow)?,
        Kind::Machine => typed(&object, &mut warnings, Spec::Machine)?,
        Kind::Job => typed(&object, &mut warnings, Spec::Job)?,
        Kind::Task => typed(&object, &mut warnings, Spec::Task)?,
        Kind::WorkflowRuleSet => typed(&object, &mut warnings, Spec::WorkflowRuleSet)?,
        Kind::Secret => {
            let data = secret::normalise(&mut object)?;
            let envelope: SecretEnvelope = with_unknown_fields(&object, &mut warnings)?;
            let _ = (envelope.data, envelope.secret_type, envelope.immutable);
            (envelope.metadata, Spec::Secret(data))
        }
    };
    validate_name("metadata.name", &metadata.name)?;
    let namespace = metadata
        .namespace
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    validate_name("metadata.namespace", &namespace)?;
    let expected_version = match metadata.resource_version.as_deref() {
        None | Some("") => None,
        Some(text) => Some(text.parse().map_err(|_| {
            FieldError::new(
                "metadata.resourceVersion",
                format!("{text:?} is not a resource version of this store"),
            )
        })?),
    };
    validate_spec(&spec, &mut warnings)?;
    // Status is the server's to write, as with Kubernetes' status subresource: a status in an
    // applied document (say, from `wisp get -o yaml`) is not stored.
    if let Some(map) = object.as_object_mut() {
        map.remove("status");
    }
    Ok(Decoded {
        key: ResourceKey {
            kind,
            namespace,
            name: metadata.name,
        },
        spec,
        object,
        expected_version,
        warnings,
    })
}

fn typed<S: DeserializeOwned>(
    object: &Value,
    warnings: &mut Vec<FieldError>,
    wrap: fn(S) -> Spec,
) -> Result<(ObjectMeta, Spec), FieldError> {
    let envelope: Envelope<S> = with_unknown_fields(object, warnings)?;
    Ok((envelope.metadata, wrap(envelope.spec)))
}

/// Deserializes `object`, adding a warning for each field that `T` does not know.
fn with_unknown_fields<T: DeserializeOwned>(
    object: &Value,
    warnings: &mut Vec<FieldError>,
) -> Result<T, FieldError> {
    let mut unknown = Vec::new();
    let mut record = |path: serde_ignored::Path| unknown.push(ignored_path(&path));
    let deserializer = serde_ignored::Deserializer::new(object, &mut record);
    let decoded = serde_path_to_error::deserialize(deserializer)
        .map_err(|err| FieldError::from_path_error("", err))?;
    warnings.extend(
        unknown
            .into_iter()
            .map(|path| FieldError::new(path, "unknown field, kept but not used by Wisp")),
    );
    Ok(decoded)
}

/// Formats serde_ignored's path the way serde_path_to_error does: `a.b[0].c`.
pub(crate) fn ignored_path(path: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        Path::Map { parent, key } => match ignored_path(parent) {
            parent if parent.is_empty() => key.clone(),
            parent => format!("{parent}.{key}"),
        },
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_path(parent),
    }
}

/// A value that must be one word of printable characters, if set.
fn validate_word(path: &str, value: Option<&str>) -> Result<(), FieldError> {
    match value {
        Some(text) if text.chars().any(|c| !c.is_ascii_graphic()) || text.len() > 253 => {
            Err(FieldError::new(
                path,
                format!("{text:?} must be one word of printable ASCII (it goes on a kernel command line)"),
            ))
        }
        _ => Ok(()),
    }
}

/// Kubernetes object names: an RFC 1123 subdomain.
fn validate_name(path: &str, name: &str) -> Result<(), FieldError> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        Ok(())
    } else {
        Err(FieldError::new(
            path,
            format!("{name:?} is not a valid name (lower-case letters, digits, '-' and '.', starting and ending with a letter or digit)"),
        ))
    }
}

fn validate_spec(spec: &Spec, warnings: &mut Vec<FieldError>) -> Result<(), FieldError> {
    match spec {
        Spec::Hardware(hardware) => {
            warnings.extend(hardware.unused_fields().into_iter().map(|field| {
                FieldError::new(
                    format!("spec.{field}"),
                    "Tinkerbell's field, kept but not used by Wisp",
                )
            }));
            if let Some(reference) = &hardware.bmc_ref {
                validate_name("spec.bmcRef.name", &reference.name)?;
            }
            // Both go on a kernel command line (worker_id=, and HookOS's file names): a word.
            validate_word("spec.agentID", hardware.agent_id.as_deref())?;
            for (index, interface) in hardware.interfaces.iter().enumerate() {
                let arch = interface
                    .dhcp
                    .as_ref()
                    .and_then(|dhcp| dhcp.arch.as_deref());
                validate_word(&format!("spec.interfaces[{index}].dhcp.arch"), arch)?;
            }
            let mut seen = BTreeMap::new();
            for (index, interface) in hardware.interfaces.iter().enumerate() {
                let Some(dhcp) = &interface.dhcp else {
                    continue;
                };
                if let Some(first) = seen.insert(dhcp.mac, index) {
                    return Err(FieldError::new(
                        format!("spec.interfaces[{index}].dhcp.mac"),
                        format!("{} is already used by spec.interfaces[{first}]", dhcp.mac),
                    ));
                }
                let set = |field: &Option<String>| field.as_deref().is_some_and(|f| !f.is_empty());
                if set(&dhcp.tftp_server_name) != set(&dhcp.boot_file_name) {
                    return Err(FieldError::new(
                        format!("spec.interfaces[{index}].dhcp"),
                        "tftp_server_name and boot_file_name must both be set or both be empty",
                    ));
                }
                if let Some(vlan) = dhcp.vlan_id.as_deref().filter(|v| !v.is_empty()) {
                    if !vlan.parse::<u16>().is_ok_and(|vlan| vlan <= 4096) {
                        return Err(FieldError::new(
                            format!("spec.interfaces[{index}].dhcp.vlan_id"),
                            format!("{vlan:?} is not a VLAN id (0 to 4096)"),
                        ));
                    }
                }
            }
            Ok(())
        }
        // `spec.data` and `spec.hardwareRef` are optional in Tinkerbell: a Template without
        // data is accepted, and a Workflow that uses it fails with the reason.
        Spec::Template(_) => Ok(()),
        Spec::Workflow(workflow) => {
            validate_name("spec.templateRef", &workflow.template_ref)?;
            if workflow.hardware_ref.is_empty() {
                Ok(())
            } else {
                validate_name("spec.hardwareRef", &workflow.hardware_ref)
            }
        }
        Spec::Machine(machine) => {
            warnings.extend(machine.validate()?);
            validate_name(
                "spec.connection.authSecretRef.name",
                &machine.connection.auth_secret_ref.name,
            )
        }
        Spec::Job(job) => {
            job.validate()?;
            validate_name("spec.machineRef.name", &job.machine_ref.name)
        }
        Spec::Task(task) => task.validate(),
        Spec::Secret(_) => Ok(()),
        Spec::WorkflowRuleSet(_) => {
            warnings.push(FieldError::new(
                "kind",
                "WorkflowRuleSet is stored but not acted on: Wisp never sees an agent it does not \
                 own, so it creates no workflows from agent attributes (apply Workflows instead)",
            ));
            Ok(())
        }
    }
}
