//! IPv4 fields, which Tinkerbell writes as strings (an empty string means unset).
use std::net::Ipv4Addr;

use serde::{de, Deserialize, Deserializer};

fn parse<E: de::Error>(text: &str) -> Result<Ipv4Addr, E> {
    text.parse()
        .map_err(|_| E::custom(format!("{text:?} is not an IPv4 address")))
}

pub fn required<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Ipv4Addr, D::Error> {
    parse(&String::deserialize(deserializer)?)
}

pub fn optional<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Ipv4Addr>, D::Error> {
    match Option::<String>::deserialize(deserializer)? {
        Some(text) if !text.is_empty() => parse(&text).map(Some),
        _ => Ok(None),
    }
}

pub fn netmask<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Ipv4Addr>, D::Error> {
    let mask = optional(deserializer)?;
    if let Some(mask) = mask {
        let bits = u32::from(mask);
        // A netmask is ones followed by zeros.
        if bits.leading_ones() + bits.trailing_zeros() != 32 {
            return Err(de::Error::custom(format!("\"{mask}\" is not a netmask")));
        }
    }
    Ok(mask)
}

/// One IPv4 address in a list, so that an error names its index (`name_servers[1]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct Ipv4(pub Ipv4Addr);

impl<'de> Deserialize<'de> for Ipv4 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        required(deserializer).map(Ipv4)
    }
}

/// An IPv4 network in CIDR notation (`10.1.0.0/16`); like Go's `net.ParseCIDR`, host bits are
/// allowed and dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let invalid = || {
            <D::Error as de::Error>::custom(format!("{text:?} is not an IPv4 network (a.b.c.d/n)"))
        };
        let (address, prefix) = text.split_once('/').ok_or_else(invalid)?;
        let address: Ipv4Addr = address.parse().map_err(|_| invalid())?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(invalid)?;
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        Ok(Cidr {
            network: Ipv4Addr::from(u32::from(address) & mask),
            prefix,
        })
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{}/{}", self.network, self.prefix))
    }
}
