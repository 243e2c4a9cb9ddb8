//! Redfish over HTTPS (bmclib calls its driver `gofish`): the ComputerSystem's power
//! (`ComputerSystem.Reset`), its boot override (`Boot.BootSourceOverride*`), and a manager's
//! virtual media (`VirtualMedia.InsertMedia`/`EjectMedia`).
//!
//! Authentication is a Redfish session (`X-Auth-Token`), falling back to basic auth when no
//! session can be made, as DMTF's clients do; `useBasicAuth` goes straight to
//! basic. `insecureTLS` accepts any certificate, as a BMC's is usually self-signed.
use std::time::Duration;

use base64::{engine::general_purpose::STANDARD, Engine};
use serde_json::{json, Value};
use ureq::http::Response;
use workflow::resource::bmc::{BootDevice, PowerAction, PowerState, Provider};

use super::provider::{Bmc, BmcError, BmcResult, Credentials, REQUEST_LIMIT};

pub struct Redfish {
    base: String,
    credentials: Credentials,
    basic_auth_only: bool,
    system_name: Option<String>,
    agent: ureq::Agent,
}

/// How requests are authenticated: one session per operation, deleted after it.
enum Auth {
    Session {
        token: String,
        location: Option<String>,
    },
    Basic(String),
}

impl Redfish {
    pub fn new(
        host: &str,
        port: u16,
        credentials: Credentials,
        insecure_tls: bool,
        basic_auth_only: bool,
        system_name: Option<String>,
    ) -> Redfish {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(REQUEST_LIMIT))
            .tls_config(
                ureq::tls::TlsConfig::builder()
                    .disable_verification(insecure_tls)
                    .build(),
            )
            .build()
            .into();
        Redfish {
            base: format!("https://{host}:{port}"),
            credentials,
            basic_auth_only,
            system_name,
            agent,
        }
    }

    /// Runs `work` with an authenticated session, which is closed after it.
    fn with_auth<T>(&self, work: impl FnOnce(&Auth) -> BmcResult<T>) -> BmcResult<T> {
        let basic = || {
            Auth::Basic(format!(
                "Basic {}",
                STANDARD.encode(format!(
                    "{}:{}",
                    self.credentials.username, self.credentials.password
                ))
            ))
        };
        let auth = if self.basic_auth_only {
            basic()
        } else {
            let response = self
                .agent
                .post(format!("{}/redfish/v1/SessionService/Sessions", self.base))
                .send_json(json!({
                    "UserName": self.credentials.username,
                    "Password": self.credentials.password,
                }))
                .map_err(transport)?;
            match response.status().as_u16() {
                200..=299 => {
                    let header = |name: &str| {
                        response
                            .headers()
                            .get(name)
                            .and_then(|value| value.to_str().ok())
                            .map(str::to_string)
                    };
                    let token = header("X-Auth-Token").ok_or_else(|| {
                        BmcError::Refused("the BMC created a session without a token".into())
                    })?;
                    Auth::Session {
                        token,
                        location: header("Location"),
                    }
                }
                // No session (no session service, or one that wants basic auth first): basic
                // auth, as DMTF's clients fall back to. Wrong credentials are refused there too.
                _ => basic(),
            }
        };
        let outcome = work(&auth);
        if let Auth::Session {
            token,
            location: Some(location),
        } = &auth
        {
            if let Ok(url) = self.url(location) {
                let _ = self.agent.delete(url).header("X-Auth-Token", token).call();
            }
        }
        outcome
    }

    /// `path` on this BMC. A link the BMC gave that leads elsewhere is not followed: the
    /// request would carry the credentials there.
    fn url(&self, path: &str) -> BmcResult<String> {
        if !path.starts_with("http") {
            return Ok(format!("{}{path}", self.base));
        }
        if path.starts_with(&format!("{}/", self.base)) {
            Ok(path.to_string())
        } else {
            Err(BmcError::Refused(format!(
                "the BMC linked to {path}, outside {}; not followed",
                self.base
            )))
        }
    }

    fn send(&self, auth: &Auth, method: &str, path: &str, body: Option<Value>) -> BmcResult<Value> {
        let url = self.url(path)?;
        let (name, value) = match auth {
            Auth::Session { token, .. } => ("X-Auth-Token", token.as_str()),
            Auth::Basic(header) => ("Authorization", header.as_str()),
        };
        let response = match (method, body) {
            ("GET", _) => self.agent.get(&url).header(name, value).call(),
            ("PATCH", Some(body)) => self.agent.patch(&url).header(name, value).send_json(body),
            (_, body) => self
                .agent
                .post(&url)
                .header(name, value)
                .send_json(body.unwrap_or_else(|| json!({}))),
        }
        .map_err(transport)?;
        read(response, method, path)
    }

    /// The ComputerSystem: the one named `systemName`, or the first.
    fn system(&self, auth: &Auth) -> BmcResult<(String, Value)> {
        let systems = self.send(auth, "GET", "/redfish/v1/Systems", None)?;
        let members: Vec<String> = systems["Members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|member| member["@odata.id"].as_str().map(str::to_string))
            .collect();
        for path in &members {
            let system = self.send(auth, "GET", path, None)?;
            let wanted = match &self.system_name {
                None => true,
                Some(name) => system["Name"] == name.as_str() || system["Id"] == name.as_str(),
            };
            if wanted {
                return Ok((path.clone(), system));
            }
        }
        Err(BmcError::Refused(match &self.system_name {
            Some(name) => format!("the BMC has no system named {name:?}"),
            None => "the BMC lists no system".into(),
        }))
    }
}

/// A transport error: TLS failed, the BMC could not be reached, or it stopped answering.
fn transport(err: ureq::Error) -> BmcError {
    let text = err.to_string();
    if text.contains("certificate")
        || text.contains("Certificate")
        || matches!(err, ureq::Error::Tls(_))
    {
        BmcError::Refused(format!(
            "TLS: {text} (a self-signed BMC certificate needs insecureTLS: true)"
        ))
    } else if matches!(
        err,
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound
    ) {
        // Nothing was sent.
        BmcError::Unreachable(format!("no answer from the BMC ({text})"))
    } else {
        // The request may have been carried out before the answer was lost.
        BmcError::Uncertain(format!("the BMC stopped answering ({text})"))
    }
}

fn refused_credentials(status: u16) -> BmcError {
    BmcError::Refused(format!(
        "the BMC refused the credentials (wrong username or password; HTTP {status})"
    ))
}

/// The body of a success, or the Redfish error message of a failure.
fn read(response: Response<ureq::Body>, method: &str, path: &str) -> BmcResult<Value> {
    let status = response.status().as_u16();
    let body: Value = response.into_body().read_json().unwrap_or(Value::Null);
    match status {
        200..=299 => Ok(body),
        401 | 403 => Err(refused_credentials(status)),
        _ => {
            let error = &body["error"];
            let message = error["@Message.ExtendedInfo"][0]["Message"]
                .as_str()
                .or_else(|| error["message"].as_str())
                .unwrap_or("no message");
            Err(BmcError::Refused(format!(
                "{method} {path}: HTTP {status}: {message}"
            )))
        }
    }
}

impl Bmc for Redfish {
    fn provider(&self) -> Provider {
        Provider::Redfish
    }

    fn power_state(&self) -> BmcResult<PowerState> {
        self.with_auth(|auth| {
            let (_, system) = self.system(auth)?;
            Ok(match system["PowerState"].as_str() {
                Some("On") => PowerState::On,
                Some("Off") => PowerState::Off,
                _ => PowerState::Unknown,
            })
        })
    }

    fn power(&self, action: PowerAction) -> BmcResult<()> {
        if action == PowerAction::Status {
            return self.power_state().map(drop);
        }
        self.with_auth(|auth| {
            let (path, system) = self.system(auth)?;
            // Many BMCs refuse On when on and ForceOff when off; there is nothing to do then.
            let already = matches!(
                (action, system["PowerState"].as_str()),
                (PowerAction::On, Some("On")) | (PowerAction::Off | PowerAction::Soft, Some("Off"))
            );
            if already {
                return Ok(());
            }
            let reset = &system["Actions"]["#ComputerSystem.Reset"];
            let allowed: Vec<&str> = reset["ResetType@Redfish.AllowableValues"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let can = |kind: &str| allowed.is_empty() || allowed.contains(&kind);
            let kind = match action {
                PowerAction::On => "On",
                PowerAction::Off => "ForceOff",
                PowerAction::Soft => "GracefulShutdown",
                PowerAction::Reset => "ForceRestart",
                // Not every BMC has PowerCycle; a forced restart is the nearest.
                PowerAction::Cycle if can("PowerCycle") => "PowerCycle",
                PowerAction::Cycle => "ForceRestart",
                PowerAction::Status => unreachable!("handled above"),
            };
            let target = reset["target"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("{path}/Actions/ComputerSystem.Reset"));
            self.send(auth, "POST", &target, Some(json!({"ResetType": kind})))
                .map(drop)
        })
    }

    fn boot_device(&self, device: BootDevice, persistent: bool, efi_boot: bool) -> BmcResult<()> {
        let target = match device {
            BootDevice::Pxe => "Pxe",
            BootDevice::Disk => "Hdd",
            BootDevice::Bios => "BiosSetup",
            BootDevice::Cdrom => "Cd",
            BootDevice::Safe => {
                return Err(BmcError::Refused(
                    "Redfish has no safe-mode boot target".into(),
                ))
            }
        };
        self.with_auth(|auth| {
            let (path, _) = self.system(auth)?;
            let boot = json!({"Boot": {
                "BootSourceOverrideTarget": target,
                "BootSourceOverrideEnabled": if persistent { "Continuous" } else { "Once" },
                "BootSourceOverrideMode": if efi_boot { "UEFI" } else { "Legacy" },
            }});
            self.send(auth, "PATCH", &path, Some(boot)).map(drop)
        })
    }

    fn virtual_media(&self, kind: &str, url: Option<&str>) -> BmcResult<()> {
        let wanted = if kind.eq_ignore_ascii_case("CD") {
            ["CD", "DVD"]
        } else {
            [kind, kind]
        };
        self.with_auth(|auth| {
            // Where the media devices are listed: the system (newer BMCs) or its managers,
            // each by its own link.
            let (_, system) = self.system(auth)?;
            let mut collections: Vec<String> = system["VirtualMedia"]["@odata.id"]
                .as_str()
                .map(str::to_string)
                .into_iter()
                .collect();
            let managers = self.send(auth, "GET", "/redfish/v1/Managers", None)?;
            for manager in managers["Members"].as_array().into_iter().flatten() {
                if let Some(path) = manager["@odata.id"].as_str() {
                    let manager = self.send(auth, "GET", path, None)?;
                    if let Some(link) = manager["VirtualMedia"]["@odata.id"].as_str() {
                        if !collections.iter().any(|c| c == link) {
                            collections.push(link.to_string());
                        }
                    }
                }
            }
            for collection in &collections {
                let media = self.send(auth, "GET", collection, None)?;
                for member in media["Members"].as_array().into_iter().flatten() {
                    let Some(path) = member["@odata.id"].as_str() else {
                        continue;
                    };
                    let device = self.send(auth, "GET", path, None)?;
                    let fits = device["MediaTypes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|t| wanted.iter().any(|w| t == w));
                    if !fits {
                        continue;
                    }
                    let actions = &device["Actions"];
                    return match url {
                        Some(url) => {
                            let target = actions["#VirtualMedia.InsertMedia"]["target"]
                                .as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| {
                                    format!("{path}/Actions/VirtualMedia.InsertMedia")
                                });
                            self.send(
                                auth,
                                "POST",
                                &target,
                                Some(
                                    json!({"Image": url, "Inserted": true, "WriteProtected": true}),
                                ),
                            )
                            .map(drop)
                        }
                        None => {
                            if device["Inserted"] == false {
                                return Ok(());
                            }
                            let target = actions["#VirtualMedia.EjectMedia"]["target"]
                                .as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| {
                                    format!("{path}/Actions/VirtualMedia.EjectMedia")
                                });
                            self.send(auth, "POST", &target, Some(json!({}))).map(drop)
                        }
                    };
                }
            }
            Err(BmcError::Refused(format!(
                "the BMC has no {kind} virtual media device"
            )))
        })
    }
}
