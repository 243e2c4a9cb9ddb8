//! What a netbooting client should load next, from what its DHCP request says about it.
//!
//! The chainload loop is the subtle part. Firmware PXE loads an iPXE binary over TFTP; that
//! iPXE then asks DHCP again, and must now be sent to its HTTP script, not to iPXE again, or it
//! loops forever. So the decision is keyed on who is asking:
//! - a client whose user class (option 77) is `iPXE`, or which sends iPXE's encapsulated
//!   options (175), is already running iPXE: it gets the HTTP URL of its script;
//! - anything else is firmware, and gets the iPXE binary for its architecture (option 93).
//!
//! QEMU's NIC option ROM is iPXE, so a VM goes straight to its script; real firmware takes the
//! TFTP hop first. Either way the HTTP script is reached exactly once.
use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Message, OptionCode};

/// Option 175: iPXE's encapsulated options, present in every request iPXE sends.
const IPXE_ENCAPSULATED: u8 = 175;

/// RFC 4578 option 93 values (and IANA's later ones) that Wisp boots.
mod arch {
    pub const BIOS: u16 = 0;
    pub const EFI_IA32: u16 = 6;
    pub const EFI_X64: u16 = 7;
    pub const EFI_BC: u16 = 9;
    pub const EFI_ARM64: u16 = 11;
    pub const EFI_X64_HTTP: u16 = 16;
    pub const EFI_ARM64_HTTP: u16 = 19;
}

/// What the request says about the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientKind {
    /// Option 93, when present.
    pub arch: Option<u16>,
    /// Option 60 begins with `PXEClient`.
    pub pxe: bool,
    /// Option 60 begins with `HTTPClient` (UEFI HTTP boot).
    pub http: bool,
    /// The client runs iPXE already.
    pub ipxe: bool,
}

impl ClientKind {
    pub fn of(request: &Message) -> ClientKind {
        let opts = request.opts();
        let vendor_class = match opts.get(OptionCode::ClassIdentifier) {
            Some(DhcpOption::ClassIdentifier(class)) => class.as_slice(),
            _ => &[],
        };
        let user_class = match opts.get(OptionCode::UserClass) {
            Some(DhcpOption::UserClass(class)) => class.as_slice(),
            _ => &[],
        };
        let arch = match opts.get(OptionCode::ClientSystemArchitecture) {
            Some(DhcpOption::ClientSystemArchitecture(arch)) => Some(u16::from(*arch)),
            _ => None,
        };
        // RFC 3004 user classes are length-prefixed; iPXE sends the bare string. Accept both.
        let ipxe_user_class =
            user_class == b"iPXE" || user_class.get(1..) == Some(b"iPXE".as_slice());
        ClientKind {
            arch,
            pxe: vendor_class.starts_with(b"PXEClient"),
            http: vendor_class.starts_with(b"HTTPClient"),
            ipxe: ipxe_user_class || opts.get(OptionCode::Unknown(IPXE_ENCAPSULATED)).is_some(),
        }
    }

    /// Whether the client is netbooting at all (and so wants boot information).
    pub fn netbooting(&self) -> bool {
        self.pxe || self.http || self.ipxe
    }
}

/// Where the client's next stage comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootTarget {
    /// An iPXE binary over TFTP, from the server's address.
    Tftp { file: String },
    /// An EFI binary over HTTP, for UEFI HTTP boot (replies carry option 60 `HTTPClient`).
    HttpBinary { url: String },
    /// The iPXE script URL.
    Script { url: String },
}

/// The boot files and URLs this server offers.
pub struct BootConfig {
    pub server: Ipv4Addr,
    /// Base of the boot HTTP server, such as `http://10.0.0.1:8080`.
    pub http_base: String,
    /// iPXE binaries present for TFTP, by name.
    pub binaries: Vec<String>,
}

impl BootConfig {
    fn has(&self, name: &str) -> bool {
        self.binaries.iter().any(|b| b == name)
    }

    /// The first of `names` that is available.
    fn first_of(&self, names: &[&str]) -> Option<String> {
        names
            .iter()
            .find(|name| self.has(name))
            .map(|name| name.to_string())
    }

    /// The default script URL of a machine.
    pub fn script_url(&self, mac: &str) -> String {
        format!("{}/ipxe/{mac}/auto.ipxe", self.http_base)
    }

    /// The boot target for `client`, or None when nothing suits its architecture.
    /// `script_url` is the machine's own script (Hardware `netboot.ipxe.url`, or the default).
    pub fn choose(&self, client: &ClientKind, script_url: String) -> Option<BootTarget> {
        if client.ipxe {
            return Some(BootTarget::Script { url: script_url });
        }
        // Without option 93 a PXE client is assumed to be BIOS, as RFC 4578 requires the
        // option of anything else.
        let file = match client.arch.unwrap_or(arch::BIOS) {
            arch::BIOS => self.first_of(&["undionly.kpxe"]),
            arch::EFI_IA32 | arch::EFI_X64 | arch::EFI_BC => {
                self.first_of(&["snponly.efi", "ipxe.efi"])
            }
            arch::EFI_ARM64 => self.first_of(&["snponly-arm64.efi", "ipxe-arm64.efi"]),
            arch::EFI_X64_HTTP => {
                return self.first_of(&["snponly.efi", "ipxe.efi"]).map(|f| {
                    BootTarget::HttpBinary {
                        url: format!("{}/ipxe/{f}", self.http_base),
                    }
                });
            }
            arch::EFI_ARM64_HTTP => {
                return self
                    .first_of(&["snponly-arm64.efi", "ipxe-arm64.efi"])
                    .map(|f| BootTarget::HttpBinary {
                        url: format!("{}/ipxe/{f}", self.http_base),
                    });
            }
            _ => None,
        }?;
        Some(BootTarget::Tftp { file })
    }
}

#[cfg(test)]
mod tests {
    use dhcproto::v4::{Architecture, MessageType, UnknownOption};

    use super::*;

    fn config(binaries: &[&str]) -> BootConfig {
        BootConfig {
            server: Ipv4Addr::new(10, 0, 0, 1),
            http_base: "http://10.0.0.1:8080".into(),
            binaries: binaries.iter().map(|b| b.to_string()).collect(),
        }
    }

    fn request(
        arch: Option<u16>,
        vendor: &[u8],
        user_class: Option<&[u8]>,
        ipxe_175: bool,
    ) -> Message {
        let mut message = Message::default();
        message
            .opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Discover));
        if let Some(arch) = arch {
            message
                .opts_mut()
                .insert(DhcpOption::ClientSystemArchitecture(Architecture::from(
                    arch,
                )));
        }
        message
            .opts_mut()
            .insert(DhcpOption::ClassIdentifier(vendor.to_vec()));
        if let Some(class) = user_class {
            message
                .opts_mut()
                .insert(DhcpOption::UserClass(class.to_vec()));
        }
        if ipxe_175 {
            message
                .opts_mut()
                .insert(DhcpOption::Unknown(UnknownOption::new(
                    OptionCode::Unknown(175),
                    vec![0xb1, 1, 1],
                )));
        }
        message
    }

    const ALL: &[&str] = &["undionly.kpxe", "ipxe.efi", "snponly.efi"];

    fn target(
        arch: Option<u16>,
        vendor: &[u8],
        user_class: Option<&[u8]>,
        ipxe_175: bool,
        binaries: &[&str],
    ) -> Option<BootTarget> {
        let client = ClientKind::of(&request(arch, vendor, user_class, ipxe_175));
        config(binaries).choose(&client, "http://10.0.0.1:8080/ipxe/m/auto.ipxe".into())
    }

    fn tftp(file: &str) -> Option<BootTarget> {
        Some(BootTarget::Tftp { file: file.into() })
    }

    #[test]
    fn firmware_gets_the_ipxe_binary_for_its_architecture() {
        let pxe = b"PXEClient:Arch:00000:UNDI:002001";
        assert_eq!(
            target(Some(0), pxe, None, false, ALL),
            tftp("undionly.kpxe")
        );
        for efi in [6, 7, 9] {
            assert_eq!(
                target(
                    Some(efi),
                    b"PXEClient:Arch:00007:UNDI:003016",
                    None,
                    false,
                    ALL
                ),
                tftp("snponly.efi")
            );
        }
        assert_eq!(
            target(Some(7), b"PXEClient", None, false, &["ipxe.efi"]),
            tftp("ipxe.efi"),
            "ipxe.efi is the fallback"
        );
        assert_eq!(
            target(Some(11), b"PXEClient", None, false, ALL),
            None,
            "no arm64 binary installed"
        );
        assert_eq!(
            target(Some(11), b"PXEClient", None, false, &["snponly-arm64.efi"]),
            tftp("snponly-arm64.efi")
        );
    }

    #[test]
    fn uefi_http_boot_gets_an_http_url() {
        assert_eq!(
            target(
                Some(16),
                b"HTTPClient:Arch:00016:UNDI:003016",
                None,
                false,
                ALL
            ),
            Some(BootTarget::HttpBinary {
                url: "http://10.0.0.1:8080/ipxe/snponly.efi".into()
            })
        );
    }

    #[test]
    fn a_client_running_ipxe_gets_its_script_and_the_loop_ends() {
        let script = Some(BootTarget::Script {
            url: "http://10.0.0.1:8080/ipxe/m/auto.ipxe".into(),
        });
        // QEMU's iPXE option ROM, and a chainloaded undionly.kpxe: user class iPXE and 175.
        assert_eq!(
            target(
                Some(0),
                b"PXEClient:Arch:00000:UNDI:002001",
                Some(b"iPXE"),
                true,
                ALL
            ),
            script
        );
        // 175 alone is enough, and so is an RFC 3004-style length-prefixed user class.
        assert_eq!(target(Some(7), b"PXEClient", None, true, ALL), script);
        assert_eq!(
            target(Some(7), b"PXEClient", Some(b"\x04iPXE"), false, ALL),
            script
        );
    }

    #[test]
    fn non_netboot_clients_are_told_apart() {
        assert!(!ClientKind::of(&request(None, b"MSFT 5.0", None, false)).netbooting());
        assert!(ClientKind::of(&request(Some(0), b"PXEClient", None, false)).netbooting());
    }
}
