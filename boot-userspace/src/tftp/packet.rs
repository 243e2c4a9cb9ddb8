//! The TFTP wire format (RFC 1350), with option negotiation (RFC 2347) and the options Wisp
//! takes: blksize (RFC 2348), timeout and tsize (RFC 2349), windowsize (RFC 7440). Pure: bytes
//! in, values out, so that every malformed case is testable without a socket.

/// The block size without a blksize option.
pub const DEFAULT_BLOCK_SIZE: u16 = 512;
/// The header of a DATA packet: opcode and block number.
pub const DATA_HEADER: usize = 4;

const RRQ: u16 = 1;
const WRQ: u16 = 2;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;

/// TFTP error codes (RFC 1350 and 2347).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    NotDefined = 0,
    FileNotFound = 1,
    AccessViolation = 2,
    IllegalOperation = 4,
}

/// A request arriving on port 69.
#[derive(Debug, PartialEq)]
pub enum Request {
    Read { filename: String, options: Options },
    Write { filename: String },
}

/// The options a client asked for, each only when its value is valid: an option with a value
/// out of range is left out of the OACK, so the client falls back to the default (RFC 2347).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    pub block_size: Option<u16>,
    pub timeout_seconds: Option<u8>,
    /// A client asks for the size by sending tsize 0.
    pub transfer_size: bool,
    pub window_size: Option<u16>,
}

/// What a client sends during a transfer.
#[derive(Debug, PartialEq)]
pub enum Reply {
    Ack(u16),
    Error(String),
}

/// Why a datagram is not a request.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum Malformed {
    #[error("shorter than an opcode")]
    Short,
    #[error("opcode {0} is not a request")]
    NotARequest(u16),
    #[error("the {0} is not NUL-terminated UTF-8 text")]
    Unterminated(&'static str),
    #[error("transfer mode {0:?} is not octet or netascii")]
    Mode(String),
}

fn opcode(datagram: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(datagram.get(..2)?.try_into().ok()?))
}

/// Splits NUL-terminated strings off the front of `bytes`.
struct Strings<'a>(&'a [u8]);

impl<'a> Strings<'a> {
    fn next(&mut self, what: &'static str) -> Result<&'a str, Malformed> {
        let end = self
            .0
            .iter()
            .position(|&b| b == 0)
            .ok_or(Malformed::Unterminated(what))?;
        let text =
            std::str::from_utf8(&self.0[..end]).map_err(|_| Malformed::Unterminated(what))?;
        self.0 = &self.0[end + 1..];
        Ok(text)
    }
}

pub fn parse_request(datagram: &[u8]) -> Result<Request, Malformed> {
    let code = opcode(datagram).ok_or(Malformed::Short)?;
    if code != RRQ && code != WRQ {
        return Err(Malformed::NotARequest(code));
    }
    let mut strings = Strings(&datagram[2..]);
    let filename = strings.next("file name")?.to_string();
    let mode = strings.next("transfer mode")?.to_ascii_lowercase();
    // Boot files are binary; a netascii client gets the same bytes, as from most boot servers.
    if mode != "octet" && mode != "netascii" {
        return Err(Malformed::Mode(mode));
    }
    if code == WRQ {
        return Ok(Request::Write { filename });
    }
    let mut options = Options::default();
    // Options are pairs; some clients pad the packet, so trailing bytes end the list.
    while let (Ok(name), Ok(value)) = (strings.next("option name"), strings.next("option value")) {
        let name = name.to_ascii_lowercase();
        match name.as_str() {
            "blksize" => {
                options.block_size = value.parse().ok().filter(|size| (8..=65464).contains(size))
            }
            "timeout" => options.timeout_seconds = value.parse().ok().filter(|&s| s >= 1),
            "tsize" => options.transfer_size = value == "0",
            "windowsize" => options.window_size = value.parse().ok().filter(|&w| w >= 1),
            _ => {}
        }
    }
    Ok(Request::Read { filename, options })
}

pub fn parse_reply(datagram: &[u8]) -> Option<Reply> {
    match opcode(datagram)? {
        ACK => Some(Reply::Ack(u16::from_be_bytes(
            datagram.get(2..4)?.try_into().ok()?,
        ))),
        ERROR => {
            let message = datagram.get(4..).unwrap_or_default();
            let message = message.split(|&b| b == 0).next().unwrap_or_default();
            Some(Reply::Error(String::from_utf8_lossy(message).into_owned()))
        }
        _ => None,
    }
}

pub fn data_header(block: u16) -> [u8; DATA_HEADER] {
    let [high, low] = block.to_be_bytes();
    let [op_high, op_low] = DATA.to_be_bytes();
    [op_high, op_low, high, low]
}

/// An OACK with the options the server took, as name/value pairs.
pub fn oack(options: &[(&str, u64)]) -> Vec<u8> {
    let mut packet = OACK.to_be_bytes().to_vec();
    for (name, value) in options {
        packet.extend_from_slice(name.as_bytes());
        packet.push(0);
        packet.extend_from_slice(value.to_string().as_bytes());
        packet.push(0);
    }
    packet
}

pub fn error(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut packet = ERROR.to_be_bytes().to_vec();
    packet.extend_from_slice(&(code as u16).to_be_bytes());
    packet.extend_from_slice(message.as_bytes());
    packet.push(0);
    packet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_requests_keep_the_valid_options_only() {
        let request =
            parse_request(b"\x00\x01ipxe.efi\x00OCTET\x00blksize\x001468\x00TSIZE\x000\x00windowsize\x008\x00timeout\x000\x00color\x00red\x00")
                .unwrap();
        let options = Options {
            block_size: Some(1468),
            timeout_seconds: None,
            transfer_size: true,
            window_size: Some(8),
        };
        assert_eq!(
            request,
            Request::Read {
                filename: "ipxe.efi".into(),
                options
            }
        );
        let Request::Read { options, .. } =
            parse_request(b"\x00\x01f\x00octet\x00blksize\x0070000\x00windowsize\x000\x00")
                .unwrap()
        else {
            panic!("a read request");
        };
        assert_eq!(
            options,
            Options::default(),
            "values out of range are ignored"
        );
    }

    #[test]
    fn malformed_requests_say_what_is_wrong() {
        assert_eq!(parse_request(b"\x00"), Err(Malformed::Short));
        assert_eq!(
            parse_request(b"\x00\x04\x00\x01"),
            Err(Malformed::NotARequest(4))
        );
        assert_eq!(
            parse_request(b"\x00\x01file"),
            Err(Malformed::Unterminated("file name"))
        );
        assert_eq!(
            parse_request(b"\x00\x01file\x00mail\x00"),
            Err(Malformed::Mode("mail".into()))
        );
        assert_eq!(
            parse_request(b"\x00\x02file\x00octet\x00"),
            Ok(Request::Write {
                filename: "file".into()
            })
        );
    }

    #[test]
    fn replies_and_packets_round_trip_the_wire_format() {
        assert_eq!(parse_reply(b"\x00\x04\x01\x02"), Some(Reply::Ack(0x0102)));
        assert_eq!(parse_reply(b"\x00\x04\x01"), None);
        assert_eq!(
            parse_reply(b"\x00\x05\x00\x08no thanks\x00"),
            Some(Reply::Error("no thanks".into()))
        );
        assert_eq!(parse_reply(b"\x00\x03\x00\x01data"), None);
        assert_eq!(data_header(0x0102), [0, 3, 1, 2]);
        assert_eq!(
            oack(&[("blksize", 1468), ("tsize", 42)]),
            b"\x00\x06blksize\x001468\x00tsize\x0042\x00"
        );
        assert_eq!(
            error(ErrorCode::FileNotFound, "no such file"),
            b"\x00\x05\x00\x01no such file\x00"
        );
    }
}
