//! IPMI v2.0 over LAN (RMCP+), through the `ipmitool` binary as Tinkerbell drives it: a
//! well-kept implementation of the session protocol and every chassis command, where a crate
//! would have to be written.
//!
//! ipmitool's exit status is not enough: it exits 0 after some refusals (a boot device the
//! BMC rejects prints "Invalid data field in request"). Its output is read as well, and with
//! `-v`, which is what tells a wrong password ("RAKP 2 HMAC is invalid") from a BMC that does
//! not answer ("Get Auth Capabilities error").
use std::{
    io::Read,
    process::{Command, Stdio},
    time::Instant,
};

use workflow::resource::bmc::{BootDevice, PowerAction, PowerState, Provider};

use super::provider::{Bmc, BmcError, BmcResult, Credentials, REQUEST_LIMIT};

pub struct Ipmitool {
    pub host: String,
    pub port: u16,
    pub credentials: Credentials,
    /// `-C`: Tinkerbell's `providerOptions.ipmitool.cipherSuite`; 3 (SHA1) by default, as most
    /// BMCs take it.
    pub cipher_suite: String,
}

impl Ipmitool {
    /// Runs `ipmitool ARGS` against the BMC; stdout on success.
    fn run(&self, args: &[&str]) -> BmcResult<String> {
        let mut child = Command::new("ipmitool")
            .args(["-I", "lanplus", "-v", "-C", &self.cipher_suite])
            .args(["-H", &self.host, "-p", &self.port.to_string()])
            // The password goes through the environment (-E), not the command line that any
            // local user can read in /proc.
            .args(["-U", &self.credentials.username, "-E"])
            .env("IPMI_PASSWORD", &self.credentials.password)
            // A second per try, three tries: an absent BMC is known within a few seconds.
            .args(["-N", "1", "-R", "3"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| BmcError::Refused(format!("cannot run ipmitool: {err}")))?;
        let deadline = Instant::now() + REQUEST_LIMIT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(BmcError::Uncertain(format!(
                        "ipmitool did not finish within {} s",
                        REQUEST_LIMIT.as_secs()
                    )));
                }
            }
        };
        let read = |stream: Option<&mut dyn Read>| {
            let mut text = String::new();
            if let Some(stream) = stream {
                let _ = stream.read_to_string(&mut text);
            }
            text
        };
        let stdout = read(child.stdout.as_mut().map(|s| s as &mut dyn Read));
        let stderr = read(child.stderr.as_mut().map(|s| s as &mut dyn Read));
        classify(status.success(), &stdout, &stderr).map(|()| stdout)
    }
}

/// What an ipmitool run means, from its exit status and output.
fn classify(success: bool, stdout: &str, stderr: &str) -> BmcResult<()> {
    let said = |needle: &str| stderr.contains(needle) || stdout.contains(needle);
    if said("RAKP 2 HMAC is invalid") || said("unauthorized name") || said("insufficient") {
        return Err(BmcError::Refused(
            "the BMC refused the credentials (wrong username or password)".into(),
        ));
    }
    // On success, -v's probe of vendor extensions may say "Invalid command": not a refusal.
    if said("Invalid data field in request") || (said("Invalid command") && !success) {
        return Err(BmcError::Refused(format!(
            "the BMC refused the request: {}",
            last_error(stdout, stderr)
        )));
    }
    if !success {
        let error = last_error(stdout, stderr);
        // No session, no command: nothing was done. A session that stops answering may have
        // carried the command out.
        return Err(
            if said("Get Auth Capabilities error")
                || said("Could not open socket")
                || said("Unable to establish")
            {
                BmcError::Unreachable(format!("no answer from the BMC ({error})"))
            } else if said("No response") || said("timeout") {
                BmcError::Uncertain(format!("the BMC stopped answering ({error})"))
            } else {
                BmcError::Refused(error)
            },
        );
    }
    Ok(())
}

/// ipmitool's last line that names an error, or its last line.
fn last_error(stdout: &str, stderr: &str) -> String {
    let lines = || stderr.lines().chain(stdout.lines()).map(str::trim);
    lines()
        .rfind(|line| line.to_ascii_lowercase().contains("error") || line.contains("Invalid"))
        .or_else(|| lines().rfind(|line| !line.is_empty()))
        .unwrap_or("ipmitool failed without a message")
        .to_string()
}

impl Bmc for Ipmitool {
    fn provider(&self) -> Provider {
        Provider::Ipmitool
    }

    fn power_state(&self) -> BmcResult<PowerState> {
        // "Chassis Power is on".
        let said = self.run(&["chassis", "power", "status"])?;
        let state = said
            .lines()
            .find_map(|line| line.trim().strip_prefix("Chassis Power is "))
            .ok_or_else(|| BmcError::Refused(format!("unexpected answer: {}", said.trim())))?;
        Ok(match state.trim() {
            "on" => PowerState::On,
            "off" => PowerState::Off,
            _ => PowerState::Unknown,
        })
    }

    fn power(&self, action: PowerAction) -> BmcResult<()> {
        let verb = match action {
            PowerAction::On => "on",
            PowerAction::Off => "off",
            PowerAction::Soft => "soft",
            PowerAction::Cycle => "cycle",
            PowerAction::Reset => "reset",
            PowerAction::Status => return self.power_state().map(drop),
        };
        self.run(&["chassis", "power", verb]).map(drop)
    }

    fn boot_device(&self, device: BootDevice, persistent: bool, efi_boot: bool) -> BmcResult<()> {
        let mut options = Vec::new();
        if persistent {
            options.push("persistent");
        }
        if efi_boot {
            options.push("efiboot");
        }
        let options = format!("options={}", options.join(","));
        let mut args = vec!["chassis", "bootdev", device.as_str()];
        if options != "options=" {
            args.push(&options);
        }
        let said = self.run(&args)?;
        // "Set Boot Device to pxe".
        if said.contains("Set Boot Device to") {
            Ok(())
        } else {
            Err(BmcError::Refused(format!(
                "the BMC did not confirm the boot device: {}",
                said.trim()
            )))
        }
    }

    fn virtual_media(&self, _kind: &str, _url: Option<&str>) -> BmcResult<()> {
        Err(BmcError::Refused(
            "IPMI has no virtual media; it needs Redfish (provider gofish)".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipmitools_output_tells_credentials_from_silence() {
        let wrong_password =
            "> RAKP 2 HMAC is invalid\nError: Unable to establish IPMI v2 / RMCP+ session\n";
        assert!(matches!(
            classify(false, "", wrong_password),
            Err(BmcError::Refused(message)) if message.contains("wrong username or password")
        ));
        let silent = "Get Auth Capabilities error\nError issuing Get Channel Authentication Capabilities request\nError: Unable to establish IPMI v2 / RMCP+ session\n";
        let unreachable = classify(false, "", silent).unwrap_err();
        assert!(
            matches!(unreachable, BmcError::Unreachable(_)),
            "{unreachable}"
        );
        assert!(
            unreachable.to_string().contains("Unable to establish"),
            "{unreachable}"
        );
        // Exit status 0, and still a refusal.
        assert!(matches!(
            classify(
                true,
                "",
                "Error setting Chassis Boot Parameter 5\nInvalid data field in request\n"
            ),
            Err(BmcError::Refused(_))
        ));
        assert_eq!(
            classify(
                true,
                "Chassis Power is on\n",
                "Loading IANA PEN Registry...\n"
            ),
            Ok(())
        );
    }
}
