//! Per-machine tokens: `<mac without colons>-<HMAC-SHA256 of the MAC, 16 bytes, hex>`, under a
//! key kept in the data directory.
use std::{fmt::Write as _, path::Path};

use anyhow::Context;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use workflow::resource::MacAddr;

const KEY_FILE: &str = "metadata.key";
const TAG_BYTES: usize = 16;

pub struct MachineTokens {
    key: [u8; 32],
}

impl MachineTokens {
    /// Loads the key, or creates it (readable by its owner alone, durably) on first start, so
    /// that tokens survive restarts.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<MachineTokens> {
        let path = data_dir.join(KEY_FILE);
        let key = workflow::store::private::load_or_create_secret(
            &path,
            |bytes| bytes.len() == 32,
            || rand::random::<[u8; 32]>().to_vec(),
        )
        .with_context(|| format!("loading the token key {}", path.display()))?;
        let key = key.try_into().expect("a valid key is 32 bytes");
        Ok(MachineTokens { key })
    }

    fn mac(&self, mac: &MacAddr) -> Hmac<Sha256> {
        let mut hmac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .expect("HMAC takes keys of any length");
        hmac.update(&mac.0);
        hmac
    }

    pub fn token(&self, mac: &MacAddr) -> String {
        let tag = self.mac(mac).finalize().into_bytes();
        let mut token = hex(&mac.0);
        token.push('-');
        token.push_str(&hex(&tag[..TAG_BYTES]));
        token
    }

    /// The machine a token names, if its tag is right (compared in constant time).
    pub fn verify(&self, token: &str) -> Option<MacAddr> {
        let (mac_hex, tag_hex) = token.split_once('-')?;
        let mac = MacAddr(unhex(mac_hex)?.try_into().ok()?);
        let tag = unhex(tag_hex)?;
        (tag.len() == TAG_BYTES && self.mac(&mac).verify_truncated_left(&tag).is_ok())
            .then_some(mac)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut text, byte| {
        let _ = write!(text, "{byte:02x}");
        text
    })
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_for_their_machine_only() {
        let dir = std::env::temp_dir().join(format!("wisp-token-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tokens = MachineTokens::load_or_create(&dir).unwrap();
        let a: MacAddr = "1c:69:7a:11:22:33".parse().unwrap();
        let b: MacAddr = "1c:69:7a:11:22:34".parse().unwrap();
        let token = tokens.token(&a);
        assert_eq!(tokens.verify(&token), Some(a));
        // Claiming another MAC with A's tag fails.
        let forged = token.replacen("1c697a112233", "1c697a112234", 1);
        assert_eq!(tokens.verify(&forged), None);
        assert_ne!(tokens.token(&b), token);
        assert_eq!(tokens.verify("garbage"), None);
        // The key persists: a restart verifies the same token.
        assert_eq!(
            MachineTokens::load_or_create(&dir).unwrap().verify(&token),
            Some(a)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
