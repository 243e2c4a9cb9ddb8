//! A workflow's `bootOptions`, carried out as Tinkerbell's workflow controller does, and its
//! conditions recorded in the same words:
//! - before the actions: `toggleAllowNetboot` sets the Hardware's `allowPXE` and
//!   `allowWorkflow` (`AllowNetbootTrue`); `bootMode` creates the BMC Job that boots the machine
//!   into the provisioning OS (`netboot-<workflow>`: off, a one-time PXE boot, on), and the
//!   actions are handed out once it completed (`BootJobSetupComplete`, `BootJobComplete`; or
//!   `BootJobSetupFailed`/`BootJobFailed`, which fail the workflow);
//! - after success: `allowPXE` and `allowWorkflow` are cleared (`AllowNetbootFalse`), and, where
//!   Tinkerbell leaves the machine as it is, Wisp sends it to its disk: the boot device is set
//!   to the disk (unless netboot was just switched off, which sends it there anyway) and it is
//!   power-cycled, unless the template's last action restarted it (`PostBootJobComplete`).
//!
//! Each pass is a step of a state machine kept in the workflow's status, so a restart resumes it.
use std::sync::Arc;

use serde_json::{json, Value};
use workflow::{
    engine::{Preparation, Settled},
    resource::{
        self,
        bmc::{
            Action, BootDevice, BootDeviceConfig, OneTimeBootDeviceAction, PowerAction,
            VirtualMediaAction,
        },
        workflow::BootMode,
        HardwareSpec, Kind, ResourceKey, WorkflowSpec,
    },
    run::{BootStatus, State},
};

use super::{
    controller::Controller,
    status::{now, Ended, RunStatus},
};

fn power(action: PowerAction) -> Action {
    Action {
        power_action: Some(action),
        ..Action::default()
    }
}

fn one_time_boot(device: BootDevice, efi_boot: bool) -> Action {
    Action {
        one_time_boot_device_action: Some(OneTimeBootDeviceAction {
            device: vec![device],
            efi_boot,
        }),
        ..Action::default()
    }
}

fn media(url: &str) -> Action {
    Action {
        virtual_media_action: Some(VirtualMediaAction {
            media_url: url.into(),
            kind: "CD".into(),
        }),
        ..Action::default()
    }
}

/// Whether an action's image restarts the machine itself (Tinkerbell's reboot and kexec
/// actions, which Wisp's worker runs as built-ins).
fn restarts_machine(image: &str) -> bool {
    let name = image.split('@').next().unwrap_or(image);
    let name = name.rsplit('/').next().unwrap_or(name);
    matches!(name.split(':').next(), Some("reboot" | "kexec"))
}

impl Controller {
    /// One step of a workflow's bootOptions.
    pub(super) async fn boot_options_pass(self: &Arc<Self>, key: &ResourceKey) {
        let spec: WorkflowSpec = match self.get(key).await {
            Ok(Some((_, spec))) => spec,
            Ok(None) => return,
            Err(err) => return tracing::error!(workflow = %key, "{err}"),
        };
        let mut boot: BootStatus = self.status_of(key).await.unwrap_or_default();
        if boot.post_done || boot.preparation_failed.is_some() {
            return;
        }
        let before = boot.clone();
        let hardware = {
            let (namespace, spec) = (key.namespace.clone(), spec.clone());
            self.blocking(move |state| state.catalog().hardware_of(&namespace, &spec))
                .await
        };
        // A workflow with no Hardware to run on is reported as blocked; nothing to prepare.
        let hardware = match hardware {
            Ok(Some(hardware)) => hardware,
            Ok(None) => return,
            Err(err) => return tracing::error!(workflow = %key, "{err}"),
        };
        // The engine's lock may be held by a call that reads the store: not on a runtime thread.
        let run = {
            let key = key.clone();
            self.blocking(move |state| state.engine.status(&key)).await
        };
        let outcome = match run.as_ref().map(|run| run.state) {
            Some(State::Success) => {
                self.after_success(key, &spec, &hardware, &mut boot, run.as_ref())
                    .await
            }
            Some(State::Failed | State::Timeout) => {
                // As Tinkerbell: nothing is undone after a failure.
                boot.post_done = true;
                Ok(())
            }
            _ if !boot.prepared => {
                let preparation = {
                    let key = key.clone();
                    self.blocking(move |state| state.engine.preparation(&key))
                        .await
                };
                match preparation {
                    Ok(Preparation::Go) => self.prepare(key, &spec, &hardware, &mut boot).await,
                    Ok(Preparation::Refused(reason)) => Err(reason),
                    Ok(Preparation::Wait) => Ok(()),
                    Err(err) => return tracing::error!(workflow = %key, "{err}"),
                }
            }
            _ => Ok(()),
        };
        if let Err(reason) = outcome {
            tracing::warn!(workflow = %key, "bootOptions failed: {reason}");
            boot.preparation_failed = Some(reason.clone());
            self.put_status(key, &boot).await;
            let failed = {
                let key = key.clone();
                self.blocking(move |state| {
                    state
                        .engine
                        .fail_unstarted(&key, reason, std::time::SystemTime::now())
                })
                .await
            };
            let failed = match failed {
                Ok(failed) => failed,
                Err(err) => return tracing::error!(workflow = %key, "{err}"),
            };
            // Raced: another appliance changed the run first; the next pass sees what it did.
            match failed.durable.wait().await {
                Ok(Settled::Stands) => {
                    if let Err(err) = self.state.sync_hardware_coalesced().await {
                        tracing::error!("syncing after a failed preparation: {err:#}");
                    }
                }
                Ok(Settled::WorkflowGone | Settled::Raced) => {}
                Err(_) => self.state.reload_runs().await,
            }
            return;
        }
        if boot != before {
            self.put_status(key, &boot).await;
        }
    }

    async fn prepare(
        self: &Arc<Self>,
        key: &ResourceKey,
        spec: &WorkflowSpec,
        hardware: &ResourceKey,
        boot: &mut BootStatus,
    ) -> Result<(), String> {
        let options = &spec.boot_options;
        if options.toggle_allow_netboot && !boot.boot_options.allow_netboot.toggled_true {
            self.toggle_netboot(hardware, boot, true).await?;
        }
        let Some(mode) = options.boot_mode else {
            boot.prepared = true;
            return Ok(());
        };
        let hardware_spec: HardwareSpec = match self.get(hardware).await? {
            Some((_, spec)) => spec,
            None => return Err(format!("failed to get hardware: {hardware} not found")),
        };
        let efi_boot = uefi(&hardware_spec);
        let (job, tasks) = match mode {
            BootMode::Netboot => (
                format!("netboot-{}", key.name),
                vec![
                    power(PowerAction::Off),
                    one_time_boot(BootDevice::Pxe, efi_boot),
                    power(PowerAction::On),
                ],
            ),
            BootMode::Isoboot | BootMode::Iso => {
                let url = options
                    .iso_url
                    .clone()
                    .filter(|url| url.starts_with("http://") || url.starts_with("https://"))
                    .ok_or("iso url must be a valid url")?;
                (
                    format!("iso-mount-{}", key.name),
                    vec![
                        power(PowerAction::Off),
                        media(""),
                        media(&url),
                        one_time_boot(BootDevice::Cdrom, efi_boot),
                        power(PowerAction::On),
                    ],
                )
            }
            BootMode::Customboot => (
                format!("customboot-preparing-{}", key.name),
                options.customboot_config.preparing_actions.clone(),
            ),
        };
        if self
            .job_done(
                key,
                &job,
                tasks,
                (hardware, &hardware_spec),
                boot,
                "BootJob",
            )
            .await?
        {
            boot.prepared = true;
        }
        Ok(())
    }

    async fn after_success(
        self: &Arc<Self>,
        key: &ResourceKey,
        spec: &WorkflowSpec,
        hardware: &ResourceKey,
        boot: &mut BootStatus,
        run: Option<&workflow::run::WorkflowStatus>,
    ) -> Result<(), String> {
        let options = &spec.boot_options;
        // A Hardware that is gone has nothing to clear.
        if options.toggle_allow_netboot
            && !boot.boot_options.allow_netboot.toggled_false
            && matches!(self.get::<Value>(hardware).await, Ok(Some(_)))
            && self.toggle_netboot(hardware, boot, false).await.is_err()
        {
            // The workflow succeeded; only the toggle is left to do, on the next pass.
            return Ok(());
        }
        let Some(mode) = options.boot_mode else {
            boot.post_done = true;
            return Ok(());
        };
        let hardware_spec: HardwareSpec = match self.get(hardware).await? {
            Some((_, spec)) => spec,
            None => {
                boot.post_done = true;
                return Ok(());
            }
        };
        let (job, tasks) = match mode {
            BootMode::Netboot => {
                let mut tasks = Vec::new();
                if !options.toggle_allow_netboot {
                    tasks.push(Action {
                        boot_device: Some(BootDeviceConfig {
                            device: BootDevice::Disk,
                            persistent: false,
                            efi_boot: uefi(&hardware_spec),
                        }),
                        ..Action::default()
                    });
                }
                let restarted = run
                    .and_then(|run| run.actions.last())
                    .is_some_and(|action| restarts_machine(&action.image));
                if !restarted {
                    tasks.push(power(PowerAction::Cycle));
                }
                (format!("netboot-post-{}", key.name), tasks)
            }
            BootMode::Isoboot | BootMode::Iso => {
                (format!("iso-eject-{}", key.name), vec![media("")])
            }
            BootMode::Customboot => (
                format!("customboot-post-{}", key.name),
                options.customboot_config.post_actions.clone(),
            ),
        };
        match self
            .job_done(
                key,
                &job,
                tasks,
                (hardware, &hardware_spec),
                boot,
                "PostBootJob",
            )
            .await
        {
            Ok(done) => boot.post_done = done,
            // The workflow succeeded: a failed post Job is recorded, not a failed workflow.
            Err(_) => boot.post_done = true,
        }
        Ok(())
    }

    /// Creates the Job `name` of `tasks` for the Hardware's Machine once, then follows it:
    /// whether it completed (`Ok(true)`), is still running (`Ok(false)`), or failed. Conditions
    /// are named `<prefix>SetupComplete`, `<prefix>SetupFailed`, `<prefix>Complete` and
    /// `<prefix>Failed`.
    async fn job_done(
        self: &Arc<Self>,
        workflow: &ResourceKey,
        name: &str,
        tasks: Vec<Action>,
        (hardware_key, hardware): (&ResourceKey, &HardwareSpec),
        boot: &mut BootStatus,
        prefix: &str,
    ) -> Result<bool, String> {
        if tasks.is_empty() {
            return Ok(true);
        }
        let job_key = ResourceKey {
            kind: Kind::Job,
            namespace: workflow.namespace.clone(),
            name: name.to_string(),
        };
        let Some(record) = boot.boot_options.jobs.get(name).cloned() else {
            let Some(machine) = hardware
                .bmc_ref
                .as_ref()
                .map(|reference| reference.name.clone())
            else {
                let message = format!(
                    "hardware {:?} does not have a BMC (spec.bmcRef)",
                    hardware_key.name
                );
                boot.condition(
                    &format!("{prefix}SetupFailed"),
                    true,
                    "Error",
                    &message,
                    now(),
                );
                return Err(message);
            };
            let object = json!({
                "apiVersion": resource::bmc::API_VERSION,
                "kind": "Job",
                "metadata": {
                    "name": name,
                    "namespace": workflow.namespace,
                    "labels": {"tink-controller-auto-created": "true"},
                    "annotations": {"tink-controller-auto-created": "true"},
                    "ownerReferences": [{
                        "apiVersion": resource::API_VERSION,
                        "kind": "Workflow",
                        "name": workflow.name,
                        "controller": true,
                    }],
                },
                "spec": {
                    "machineRef": {"name": machine, "namespace": workflow.namespace},
                    "tasks": tasks,
                },
            });
            // A Job of this name that this workflow owns is its own, created before a restart
            // or a lost status write: it is followed, not created twice. Any other goes first,
            // with its Tasks, so that its outcome is not taken for this one's.
            match self.get::<Value>(&job_key).await {
                Ok(Some((existing, _))) if owned_by(&existing.object, workflow) => {
                    boot.boot_options
                        .jobs
                        .insert(name.to_string(), Default::default());
                    return Ok(false);
                }
                Ok(Some(_)) => self.delete_job(&job_key).await,
                _ => {}
            }
            if let Err(err) = self.create(object).await {
                let message = format!("error creating job: {err}");
                boot.condition(
                    &format!("{prefix}SetupFailed"),
                    true,
                    "Error",
                    &message,
                    now(),
                );
                return Err(message);
            }
            boot.condition(
                &format!("{prefix}SetupComplete"),
                true,
                "Created",
                "job created",
                now(),
            );
            boot.boot_options
                .jobs
                .insert(name.to_string(), Default::default());
            return Ok(false);
        };
        if record.complete {
            return Ok(true);
        }
        if !matches!(self.get::<Value>(&job_key).await, Ok(Some(_))) {
            let message = format!("error getting job: {name} not found");
            boot.condition(&format!("{prefix}Failed"), true, "Error", &message, now());
            return Err(message);
        }
        let status: RunStatus = self.status_of(&job_key).await?;
        match status.ended() {
            None => Ok(false),
            Some(Ended::Completed) => {
                boot.condition(
                    &format!("{prefix}Complete"),
                    true,
                    "Complete",
                    "job completed",
                    now(),
                );
                if let Some(record) = boot.boot_options.jobs.get_mut(name) {
                    record.complete = true;
                }
                Ok(true)
            }
            Some(Ended::Failed(message)) => {
                let message = format!("job {name} failed: {message}");
                boot.condition(&format!("{prefix}Failed"), true, "Error", &message, now());
                Err(message)
            }
        }
    }

    /// Deletes a Job, and its Tasks with it.
    async fn delete_job(&self, job: &ResourceKey) {
        let job = job.clone();
        if let Err(err) = self
            .blocking(move |state| state.catalog().delete(&job))
            .await
        {
            tracing::error!("deleting an earlier job: {err}");
        }
    }

    /// `toggleAllowNetboot`'s half: netboot on (before) or off (after), recorded as the
    /// condition `AllowNetbootTrue` or `AllowNetbootFalse`.
    async fn toggle_netboot(
        &self,
        hardware: &ResourceKey,
        boot: &mut BootStatus,
        allow: bool,
    ) -> Result<(), String> {
        let kind = if allow {
            "AllowNetbootTrue"
        } else {
            "AllowNetbootFalse"
        };
        match self.set_netboot(hardware, allow).await {
            Ok(()) => {
                let toggled = &mut boot.boot_options.allow_netboot;
                if allow {
                    toggled.toggled_true = true;
                } else {
                    toggled.toggled_false = true;
                }
                let message = format!("set allowPXE to {allow}");
                boot.condition(kind, true, "Complete", &message, now());
                Ok(())
            }
            Err(err) => {
                let message = format!("error setting allowPXE to {allow}: {err}");
                boot.condition(kind, false, "Error", &message, now());
                Err(message)
            }
        }
    }

    /// Sets `allowPXE` and `allowWorkflow` on every interface of the Hardware, then brings the
    /// DHCP server and the gate in line. A concurrent change to the Hardware is retried.
    async fn set_netboot(&self, hardware: &ResourceKey, allow: bool) -> Result<(), String> {
        for _ in 0..4 {
            let Some((resource, _)) = self.get::<Value>(hardware).await? else {
                return Err(format!("error getting hardware: {hardware} not found"));
            };
            let mut object = resource.object.clone();
            if let Some(interfaces) = object["spec"]["interfaces"].as_array_mut() {
                for interface in interfaces {
                    if !interface["netboot"].is_object() {
                        interface["netboot"] = json!({});
                    }
                    interface["netboot"]["allowPXE"] = json!(allow);
                    interface["netboot"]["allowWorkflow"] = json!(allow);
                }
            }
            object["metadata"]["resourceVersion"] = json!(resource.version.to_string());
            match self.create(object).await {
                Ok(()) => {
                    let state = Arc::clone(&self.state);
                    return state
                        .sync_hardware_coalesced()
                        .await
                        .map_err(|err| format!("{err:#}"));
                }
                Err(err) if err.contains("conflict") || err.contains("resourceVersion") => continue,
                Err(err) => return Err(err),
            }
        }
        Err(format!("{hardware} kept changing"))
    }
}

/// Whether the machine boots in EFI mode, as Tinkerbell decides it: any interface with
/// `dhcp.uefi`.
fn uefi(hardware: &HardwareSpec) -> bool {
    hardware
        .interfaces
        .iter()
        .any(|interface| interface.dhcp.as_ref().is_some_and(|dhcp| dhcp.uefi))
}

/// Whether `object`'s controller is the Workflow `workflow`.
fn owned_by(object: &Value, workflow: &ResourceKey) -> bool {
    object["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|references| {
            references.iter().any(|reference| {
                reference["kind"] == "Workflow"
                    && reference["name"] == workflow.name.as_str()
                    && reference["controller"] == true
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reboot_and_kexec_images_restart_the_machine() {
        assert!(restarts_machine("quay.io/tinkerbell/actions/reboot:latest"));
        assert!(restarts_machine(
            "quay.io/tinkerbell-actions/kexec:v1.0.0@sha256:abc"
        ));
        assert!(!restarts_machine(
            "quay.io/tinkerbell-actions/writefile:v1.0.0"
        ));
    }
}
