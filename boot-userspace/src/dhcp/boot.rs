//! What a netbooting client should load next, from what its DHCP request says about it.
//!
//! The chainload loop is the subtle part. Firmware PXE loads an iPXE binary over TFTP; that
//! iPXE asks DHCP again, and must now be sent to its HTTP script, or it loads iPXE again,
//! forever. Debian's stock iPXE cannot carry a user class of Wisp's own (that needs a custom
//! build), and it sends the same user class (`iPXE`, option 77) and encapsulated options (175)
//! as any other iPXE, such as the option ROM of a QEMU NIC. So the decision uses one more fact,
//! kept by the DHCP server: whether Wisp handed this MAC an iPXE binary moments ago.
//! - An iPXE client that Wisp just chainloaded gets the HTTP URL of its script.
//! - Anything else gets Wisp's iPXE binary for its architecture (option 93): firmware PXE, and
//!   also a foreign iPXE (a NIC ROM), so that every machine runs the same known iPXE build.
//!   Tinkerbell does the same with its own builds.
//!
//! Each boot therefore reaches the HTTP script exactly once: firmware → binary → script, or
//! iPXE ROM → binary → script. A request that Wisp cannot serve a binary for, from a client
//! already running iPXE, goes to the script directly.
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

impl BootTarget {
    /// An iPXE binary rather than the script.
    pub fn is_binary(&self) -> bool {
        !matches!(self, BootTarget::Script { .. })
    }
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
    /// `chainloaded`: Wisp handed this MAC an iPXE binary moments ago. `script_url` is the
    /// machine's own script (Hardware `netboot.ipxe.url`, or the default).
    pub fn choose(
        &self,
        client: &ClientKind,
        chainloaded: bool,
        script_url: String,
    ) -> Option<BootTarget> {
        let script = BootTarget::Script { url: script_url };
        if client.ipxe && chainloaded {
            return Some(script);
        }
        let binary = self.binary_for(client.arch);
        match binary {
            Some(target) => Some(target),
            None if client.ipxe => Some(script),
            None => None,
        }
    }

    fn binary_for(&self, client_arch: Option<u16>) -> Option<BootTarget> {
        let efi_x64 = || self.first_of(&["snponly.efi", "ipxe.efi"]);
        // `snp-arm64.efi` is Tinkerbell's name for it.
        let efi_arm64 = || self.first_of(&["snponly-arm64.efi", "snp-arm64.efi", "ipxe-arm64.efi"]);
        let http = |file: String| BootTarget::HttpBinary {
            url: format!("{}/ipxe/{file}", self.http_base),
        };
        // Without option 93 a PXE client is taken for BIOS: RFC 4578 requires the option of
        // every other architecture.
        match client_arch.unwrap_or(arch::BIOS) {
            arch::BIOS => self
                .first_of(&["undionly.kpxe"])
                .map(|file| BootTarget::Tftp { file }),
            arch::EFI_IA32 | arch::EFI_X64 | arch::EFI_BC => {
                efi_x64().map(|file| BootTarget::Tftp { file })
            }
            arch::EFI_ARM64 => efi_arm64().map(|file| BootTarget::Tftp { file }),
            arch::EFI_X64_HTTP => efi_x64().map(http),
            arch::EFI_ARM64_HTTP => efi_arm64().map(http),
            _ => None,
        }
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

    /// What a client asking this gets, when Wisp has (or has not) just chainloaded it.
    fn target(
        chainloaded: bool,
        arch: Option<u16>,
        vendor: &[u8],
        user_class: Option<&[u8]>,
        ipxe_175: bool,
        binaries: &[&str],
    ) -> Option<BootTarget> {
        let client = ClientKind::of(&request(arch, vendor, user_class, ipxe_175));
        config(binaries).choose(
            &client,
            chainloaded,
            "http://10.0.0.1:8080/ipxe/m/auto.ipxe".into(),
        )
    }

    fn tftp(file: &str) -> Option<BootTarget> {
        Some(BootTarget::Tftp { file: file.into() })
    }

    #[test]
    fn firmware_gets_the_ipxe_binary_for_its_architecture() {
        let pxe = b"PXEClient:Arch:00000:UNDI:002001";
        assert_eq!(
            target(false, Some(0), pxe, None, false, ALL),
            tftp("undionly.kpxe")
        );
        for efi in [6, 7, 9] {
            assert_eq!(
                target(
                    false,
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
            target(false, Some(7), b"PXEClient", None, false, &["ipxe.efi"]),
            tftp("ipxe.efi"),
            "ipxe.efi is the fallback"
        );
        assert_eq!(
            target(false, Some(11), b"PXEClient", None, false, ALL),
            None,
            "no arm64 binary installed"
        );
        assert_eq!(
            target(
                false,
                Some(11),
                b"PXEClient",
                None,
                false,
                &["snponly-arm64.efi"]
            ),
            tftp("snponly-arm64.efi")
        );
        // Tinkerbell's name for it, as users migrating bring their binaries.
        assert_eq!(
            target(
                false,
                Some(11),
                b"PXEClient",
                None,
                false,
                &["snp-arm64.efi"]
            ),
            tftp("snp-arm64.efi")
        );
    }

    #[test]
    fn uefi_http_boot_gets_an_http_url() {
        assert_eq!(
            target(
                false,
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
    fn the_chainload_loop_ends_exactly_once() {
        let script = Some(BootTarget::Script {
            url: "http://10.0.0.1:8080/ipxe/m/auto.ipxe".into(),
        });
        let rom = |chainloaded| {
            target(
                chainloaded,
                Some(0),
                b"PXEClient:Arch:00000:UNDI:002001",
                Some(b"iPXE"),
                true,
                ALL,
            )
        };
        // A foreign iPXE (QEMU's NIC ROM) gets Wisp's binary; once chainloaded, its script.
        assert_eq!(rom(false), tftp("undionly.kpxe"));
        assert_eq!(rom(true), script);
        // The same for UEFI, with 175 alone or an RFC 3004 length-prefixed user class.
        assert_eq!(target(true, Some(7), b"PXEClient", None, true, ALL), script);
        assert_eq!(
            target(true, Some(7), b"PXEClient", Some(b"\x04iPXE"), false, ALL),
            script
        );
        // Firmware never gets the script, even just after a handoff.
        assert_eq!(
            target(true, Some(7), b"PXEClient", None, false, ALL),
            tftp("snponly.efi")
        );
        // An iPXE client with no binary for its architecture runs its script.
        assert_eq!(
            target(false, Some(11), b"PXEClient", Some(b"iPXE"), false, ALL),
            script
        );
    }

    #[test]
    fn non_netboot_clients_are_told_apart() {
        assert!(!ClientKind::of(&request(None, b"MSFT 5.0", None, false)).netbooting());
        assert!(ClientKind::of(&request(Some(0), b"PXEClient", None, false)).netbooting());
    }
}
