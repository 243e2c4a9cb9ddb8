//! Per-machine tokens: `<mac without colons>-<HMAC-SHA256 of the MAC, 16 bytes, hex>`, under a
//! key kept in the data directory.
use std::{fmt::Write as _, io::Write as _, path::Path};

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
    /// Loads the key, or creates it (readable by root only) on first start, so that tokens
    /// survive restarts.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<MachineTokens> {
        let path = data_dir.join(KEY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                workflow::store::private::restrict(&path, 0o600)
                    .with_context(|| format!("restricting {}", path.display()))?;
                let key = bytes
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("{} is not a 32-byte key", path.display()))?;
                Ok(MachineTokens { key })
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                // Written aside and renamed into place, so a crash never leaves a short key.
                let key: [u8; 32] = rand::random();
                let partial = data_dir.join(format!("{KEY_FILE}.new"));
                let mut file = workflow::store::private::file_options()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&partial)
                    .with_context(|| format!("creating {}", partial.display()))?;
                file.write_all(&key)?;
                file.sync_all()?;
                std::fs::rename(&partial, &path)
                    .with_context(|| format!("creating {}", path.display()))?;
                // The rename is durable only once the directory is: without this, a power loss
                // could bring back no key, and a new one would refuse every token handed out.
                std::fs::File::open(data_dir)
                    .and_then(|dir| dir.sync_all())
                    .with_context(|| format!("syncing {}", data_dir.display()))?;
                Ok(MachineTokens { key })
            }
            Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
        }
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
