//! The rules that span resources, on top of a [`Store`]: one Hardware per MAC, and whether a
//! Workflow's references resolve.
use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};

use crate::{
    manifest::{Origin, Problem},
    resource::{
        Decoded, FieldError, HardwareSpec, Kind, MacAddr, Resource, ResourceKey, Spec, WorkflowSpec,
    },
    store::{Applied, Store, StoreError, Write},
};

/// The Hardware behind each agent id (see [`Catalog::agent_owners`]).
#[derive(Default)]
pub struct AgentOwners {
    macs: BTreeMap<MacAddr, ResourceKey>,
    agent_ids: BTreeMap<String, ResourceKey>,
}

impl AgentOwners {
    /// The owner of `agent`: a Hardware's `spec.agentID`, or one of its MACs.
    pub fn of(&self, agent: &str) -> Option<ResourceKey> {
        self.agent_ids.get(agent).cloned().or_else(|| {
            agent
                .parse::<MacAddr>()
                .ok()
                .and_then(|mac| self.macs.get(&mac).cloned())
        })
    }
}

/// What an apply stored, and what it accepted but has to say about.
#[derive(Debug)]
pub struct ApplyReport {
    pub applied: Vec<Applied>,
    pub warnings: Vec<Problem>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("the manifest has {} error(s)", .0.len())]
    Invalid(Vec<Problem>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The resources, over whichever [`Store`] backend the appliance was started with.
pub struct Catalog {
    store: Arc<dyn Store>,
    /// Serialises writers, so that the cross-resource checks see what they commit against.
    writer: Mutex<()>,
}

impl Catalog {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Catalog {
            store,
            writer: Mutex::new(()),
        }
    }

    pub fn store(&self) -> &dyn Store {
        &*self.store
    }

    /// Applies validated documents in one transaction: all of them, or none. A Workflow whose
    /// template does not render for its machine is accepted, as Tinkerbell accepts it, and
    /// the reason comes back as a warning (and later as the Workflow's state).
    pub fn apply(&self, documents: Vec<(Origin, Decoded)>) -> Result<ApplyReport, ApplyError> {
        let _writer = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // MACs and reserved addresses each belong to one Hardware: two owners would split a
        // machine's DHCP and metadata between them.
        let hardware = self.hardware()?;
        let mut macs: BTreeMap<MacAddr, ResourceKey> = BTreeMap::new();
        let mut addresses: BTreeMap<std::net::Ipv4Addr, ResourceKey> = BTreeMap::new();
        // An agent id names one machine: a Hardware's agentID is no other's, nor another's MAC.
        let mut agents: BTreeMap<String, ResourceKey> = BTreeMap::new();
        // The batch replaces what it names, so its own Hardware's old claims are free to reuse.
        let replaced =
            |key: &ResourceKey| documents.iter().any(|(_, document)| document.key == *key);
        for (key, spec) in hardware.iter().filter(|(key, _)| !replaced(key)) {
            if let Some(agent) = spec.agent_id.as_deref().filter(|a| !a.is_empty()) {
                agents.insert(agent.to_string(), key.clone());
            }
            for (_, dhcp) in spec.dhcp_interfaces() {
                macs.insert(dhcp.mac, key.clone());
                if let Some(ip) = &dhcp.ip {
                    addresses.insert(ip.address, key.clone());
                }
            }
        }
        let mut problems = Vec::new();
        for (origin, document) in &documents {
            let Spec::Hardware(hardware) = &document.spec else {
                continue;
            };
            let mut claim = |path: String, owner: Option<ResourceKey>, what: String| {
                if let Some(owner) = owner.filter(|owner| *owner != document.key) {
                    problems.push(Problem {
                        origin: origin.clone(),
                        field: FieldError {
                            path,
                            message: format!("{what} is already owned by {owner}"),
                        },
                    });
                }
            };
            if let Some(agent) = hardware.agent_id.as_deref().filter(|a| !a.is_empty()) {
                let owner = agents
                    .insert(agent.to_string(), document.key.clone())
                    .or_else(|| {
                        agent
                            .parse::<MacAddr>()
                            .ok()
                            .and_then(|mac| macs.get(&mac).cloned())
                    });
                claim("spec.agentID".into(), owner, format!("agent id {agent:?}"));
            }
            for (index, dhcp) in hardware.dhcp_interfaces() {
                let owner = macs.insert(dhcp.mac, document.key.clone());
                claim(
                    format!("spec.interfaces[{index}].dhcp.mac"),
                    owner,
                    dhcp.mac.to_string(),
                );
                if let Some(ip) = &dhcp.ip {
                    let owner = addresses.insert(ip.address, document.key.clone());
                    claim(
                        format!("spec.interfaces[{index}].dhcp.ip.address"),
                        owner,
                        ip.address.to_string(),
                    );
                }
            }
        }
        if !problems.is_empty() {
            return Err(ApplyError::Invalid(problems));
        }
        let mut warnings = Vec::new();
        for (origin, document) in &documents {
            if let Spec::Workflow(workflow) = &document.spec {
                for field in self.render_check(&document.key.namespace, workflow, &documents)? {
                    warnings.push(Problem {
                        origin: origin.clone(),
                        field,
                    });
                }
            }
        }
        let writes = documents
            .into_iter()
            .map(|(_, document)| Write {
                key: document.key,
                object: document.object,
                expected_version: document.expected_version,
            })
            .collect();
        Ok(ApplyReport {
            applied: self.store.apply(writes)?,
            warnings,
        })
    }

    /// Renders a Workflow's template for its hardware when both exist (in the batch or the
    /// store), so that a key the template needs but `hardwareMap` lacks is reported when the
    /// workflow is created. A missing template or hardware is reported as blocked instead.
    fn render_check(
        &self,
        namespace: &str,
        workflow: &WorkflowSpec,
        batch: &[(Origin, Decoded)],
    ) -> Result<Vec<FieldError>, StoreError> {
        let find = |kind: Kind, name: &str| -> Result<Option<serde_json::Value>, StoreError> {
            let key = ResourceKey {
                kind,
                namespace: namespace.to_string(),
                name: name.to_string(),
            };
            if let Some((_, document)) = batch.iter().find(|(_, document)| document.key == key) {
                return Ok(Some(document.object.clone()));
            }
            Ok(self.store.get(&key)?.map(|resource| resource.object))
        };
        let Some(template) = find(Kind::Template, &workflow.template_ref)? else {
            return Ok(Vec::new());
        };
        // Without a hardwareRef, Tinkerbell renders against an empty Hardware.
        let hardware = if workflow.hardware_ref.is_empty() {
            serde_json::Value::Null
        } else {
            match find(Kind::Hardware, &workflow.hardware_ref)? {
                Some(hardware) => hardware,
                None => return Ok(Vec::new()),
            }
        };
        let data = template["spec"]["data"].as_str().unwrap_or_default();
        if data.is_empty() {
            return Ok(vec![FieldError {
                path: "spec.templateRef".into(),
                message: format!("template {:?} has no spec.data", workflow.template_ref),
            }]);
        }
        let rendered = match crate::template::render(data, &workflow.hardware_map, &hardware) {
            Ok(rendered) => rendered,
            Err(err) => {
                return Ok(vec![FieldError {
                    path: "spec.hardwareMap".into(),
                    message: format!(
                        "template {:?} does not render for hardware {:?}: {err}",
                        workflow.template_ref, workflow.hardware_ref
                    ),
                }])
            }
        };
        Ok(match crate::run::Plan::parse_noting_unused(&rendered) {
            Ok((_, unused)) => unused
                .into_iter()
                .map(|path| FieldError {
                    path: "spec.templateRef".into(),
                    message: format!(
                        "template {:?}, rendered: {path}: not used by Wisp",
                        workflow.template_ref
                    ),
                })
                .collect(),
            Err(err) => vec![FieldError {
                path: "spec.templateRef".into(),
                message: format!("template {:?}: {err}", workflow.template_ref),
            }],
        })
    }

    /// Deletes a resource, and what it owns, as Kubernetes' garbage collector would: the BMC
    /// Jobs a Workflow's bootOptions created, the Tasks of a Job.
    pub fn delete(&self, key: &ResourceKey) -> Result<Option<Resource>, StoreError> {
        let _writer = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let removed = self.store.delete(key)?;
        if removed.is_some() {
            self.delete_owned_by(key)?;
        }
        Ok(removed)
    }

    fn delete_owned_by(&self, owner: &ResourceKey) -> Result<(), StoreError> {
        let owned_kinds: &[Kind] = match owner.kind {
            Kind::Workflow => &[Kind::Job],
            Kind::Job => &[Kind::Task],
            _ => return Ok(()),
        };
        for kind in owned_kinds {
            for resource in self.store.list(*kind)? {
                let owned = resource.key.namespace == owner.namespace
                    && resource.object["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(|references| {
                            references.iter().any(|reference| {
                                reference["kind"] == owner.kind.as_str()
                                    && reference["name"] == owner.name.as_str()
                                    && reference["controller"] == true
                            })
                        });
                if owned && self.store.delete(&resource.key)?.is_some() {
                    self.delete_owned_by(&resource.key)?;
                }
            }
        }
        Ok(())
    }

    /// Every Hardware with its typed spec.
    pub fn hardware(&self) -> Result<Vec<(ResourceKey, HardwareSpec)>, StoreError> {
        self.store
            .list(Kind::Hardware)?
            .into_iter()
            .map(|hardware| {
                let spec: HardwareSpec = hardware
                    .spec()
                    .map_err(|err| StoreError::decode(&hardware.key, err))?;
                Ok((hardware.key, spec))
            })
            .collect()
    }

    /// The Hardware a Workflow runs on (see [`WorkflowSpec::hardware`]).
    pub fn hardware_of(
        &self,
        namespace: &str,
        spec: &WorkflowSpec,
    ) -> Result<Option<ResourceKey>, StoreError> {
        let owners = if spec.hardware_ref.is_empty() {
            self.agent_owners()?
        } else {
            AgentOwners::default()
        };
        Ok(spec.hardware(namespace, |agent| owners.of(agent)))
    }

    /// Whose agent each agent id is: every MAC a Hardware owns, and each `spec.agentID`.
    pub fn agent_owners(&self) -> Result<AgentOwners, StoreError> {
        let mut owners = AgentOwners::default();
        for (key, spec) in self.hardware()? {
            for mac in spec.macs() {
                owners.macs.insert(mac, key.clone());
            }
            if let Some(agent) = spec.agent_id.filter(|agent| !agent.is_empty()) {
                owners.agent_ids.insert(agent, key);
            }
        }
        Ok(owners)
    }

    /// Every MAC that some Hardware owns, and its owner: the XDP gate's allowlist.
    pub fn mac_owners(&self) -> Result<BTreeMap<MacAddr, ResourceKey>, StoreError> {
        let mut owners = BTreeMap::new();
        for (key, spec) in self.hardware()? {
            for mac in spec.macs() {
                owners.insert(mac, key.clone());
            }
        }
        Ok(owners)
    }

    /// The Hardware that some Workflow names in `hardwareRef` (in the Workflow's namespace),
    /// counting only Workflows whose template exists and that have not finished: a blocked or
    /// finished workflow is no pending work.
    pub fn bound_hardware(&self) -> Result<HashSet<ResourceKey>, StoreError> {
        let finished: HashSet<ResourceKey> = self
            .store
            .workflow_statuses()?
            .into_iter()
            .filter(|(_, run)| run.status.state.is_final())
            .map(|(key, _)| key)
            .collect();
        let mut bound = HashSet::new();
        // Asked for only when a workflow has no hardwareRef.
        let mut owners = None;
        for workflow in self.store.list(Kind::Workflow)? {
            if finished.contains(&workflow.key) {
                continue;
            }
            let spec: WorkflowSpec = workflow
                .spec()
                .map_err(|err| StoreError::decode(&workflow.key, err))?;
            if spec.disabled == Some(true) {
                continue;
            }
            let namespace = workflow.key.namespace;
            let template = ResourceKey {
                kind: Kind::Template,
                namespace: namespace.clone(),
                name: spec.template_ref.clone(),
            };
            if self.store.get(&template)?.is_some() {
                if spec.hardware_ref.is_empty() && owners.is_none() {
                    owners = Some(self.agent_owners()?);
                }
                bound.extend(spec.hardware(&namespace, |agent| {
                    owners.as_ref().and_then(|owners| owners.of(agent))
                }));
            }
        }
        Ok(bound)
    }

    /// Whether a Workflow's template and hardware exist. A missing one is reported, never
    /// guessed: a workflow is bound only to the Hardware its `hardwareRef` names, or without
    /// one, to the owner of a MAC of its `hardwareMap`.
    pub fn binding(&self, workflow: &Resource) -> Result<Binding, StoreError> {
        let spec: WorkflowSpec = workflow
            .spec()
            .map_err(|err| StoreError::decode(&workflow.key, err))?;
        let namespace = &workflow.key.namespace;
        let reference = |kind: Kind, name: &str| -> Result<Reference, StoreError> {
            let key = ResourceKey {
                kind,
                namespace: namespace.clone(),
                name: name.to_string(),
            };
            let found = self.store.get(&key)?.is_some();
            Ok(Reference {
                name: name.to_string(),
                found,
            })
        };
        let hardware = match self.hardware_of(namespace, &spec)? {
            Some(key) => reference(Kind::Hardware, &key.name)?,
            None => Reference {
                name: String::new(),
                found: false,
            },
        };
        Ok(Binding {
            template: reference(Kind::Template, &spec.template_ref)?,
            hardware,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reference {
    pub name: String,
    pub found: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub template: Reference,
    pub hardware: Reference,
}

impl Binding {
    /// A one-line state for listings: `Ready`, or what is missing.
    pub fn summary(&self) -> String {
        let missing: Vec<String> = [("template", &self.template), ("hardware", &self.hardware)]
            .into_iter()
            .filter(|(_, reference)| !reference.found)
            .map(|(what, reference)| match reference.name.as_str() {
                "" => "no hardwareRef, and no Hardware's agent id (a MAC or its agentID) is in \
                       its hardwareMap"
                    .to_string(),
                name => format!("{what} {name:?} not found"),
            })
            .collect();
        if missing.is_empty() {
            "Ready".to_string()
        } else {
            format!("Blocked: {}", missing.join(", "))
        }
    }
}
