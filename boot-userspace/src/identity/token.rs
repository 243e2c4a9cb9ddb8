//! Per-boot machine tokens: `<MAC>-<boot>-<expiry>-<tag>`, in hex, where the tag is an
//! HMAC-SHA256 (16 bytes) of the rest under a key kept in the data directory.
//!
//! A token is minted when a machine that has work fetches its iPXE script right after Wisp's
//! DHCP pointed it there (`boot.rs` on the handoff), and it names that boot. The boot is
//! recorded durably ([`BootStore`]), replacing the machine's earlier one, so a token of an
//! earlier boot is refused, and so is one whose workflow has ended (its boot is ended then) or
//! whose expiry has passed. A restart keeps the boots, so a machine mid-install keeps working.
//!
//! The key only spares the store a lookup for tokens that were never minted. If it is lost (a
//! disk that lost the key file in a crash), a token whose boot is still the machine's current
//! one is accepted, with a warning: the boot id is 64 random bits that only the token carries.
use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    net::Ipv4Addr,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use workflow::{
    resource::MacAddr,
    store::{Boot, BootRecord, BootStore, StoreError},
};

use super::Refusal;

const KEY_FILE: &str = "metadata.key";
const TAG_BYTES: usize = 16;

pub struct MachineTokens {
    key: [u8; 32],
    lifetime: Duration,
    store: Arc<dyn BootStore>,
    /// The boot each machine is on, as the store has it. Held across a store write and the
    /// update that follows it, so that the two never disagree.
    boots: Mutex<Boots>,
    /// One reload of the boots at a time (see [`Boots::changed_while_reading`]).
    reloading: Mutex<()>,
}

/// The machines' boots, and what changed here while the store was being read again.
#[derive(Default)]
struct Boots {
    current: HashMap<MacAddr, BootRecord>,
    /// The machines whose boot this appliance started or ended while a reload read the store,
    /// which the read may predate: the reload keeps what this appliance knows of them. Without
    /// it, a reload of 10,000 boots (many pages of etcd) lost the boots minted meanwhile, and
    /// their machines' tokens were refused as of ended boots.
    changed_while_reading: Option<HashSet<MacAddr>>,
}

impl Boots {
    fn set(&mut self, mac: MacAddr, record: Option<BootRecord>) {
        match record {
            Some(record) => self.current.insert(mac, record),
            None => self.current.remove(&mac),
        };
        if let Some(changed) = &mut self.changed_while_reading {
            changed.insert(mac);
        }
    }

    /// The boots as read from the store, but for those changed here since the read began.
    fn replace(&mut self, read: Vec<(MacAddr, BootRecord)>) {
        let mut read: HashMap<MacAddr, BootRecord> = read.into_iter().collect();
        for mac in self.changed_while_reading.take().unwrap_or_default() {
            match self.current.get(&mac) {
                Some(record) => read.insert(mac, *record),
                None => read.remove(&mac),
            };
        }
        self.current = read;
    }
}

impl MachineTokens {
    /// Loads the key (or creates it, durably, readable by its owner alone) and the boots.
    /// Tokens are minted to last `lifetime`.
    pub fn load(
        data_dir: &Path,
        store: Arc<dyn BootStore>,
        lifetime: Duration,
    ) -> anyhow::Result<MachineTokens> {
        let path = data_dir.join(KEY_FILE);
        let key = workflow::store::private::load_or_create_secret(
            &path,
            |bytes| bytes.len() == 32,
            || rand::random::<[u8; 32]>().to_vec(),
        )
        .with_context(|| format!("loading the token key {}", path.display()))?;
        // Appliances sharing a store share its key: a token one mints, another verifies.
        let key = match store
            .shared_token_key(&key)
            .context("reading the token key from the shared store")?
        {
            Some(shared) => {
                tracing::info!("token key shared through the store");
                shared
            }
            None => key,
        };
        let key = <[u8; 32]>::try_from(key)
            .map_err(|_| anyhow::anyhow!("the token key is not a 32-byte key"))?;
        let boots = store.boots().context("loading the machines' boots")?;
        Ok(MachineTokens {
            key,
            lifetime,
            store,
            boots: Mutex::new(Boots {
                current: boots.into_iter().collect(),
                changed_while_reading: None,
            }),
            reloading: Mutex::new(()),
        })
    }

    /// Starts a new boot of `mac` and returns its token, if `wanted` (asked under the lock that
    /// ending boots takes: whether the machine still has work) says so; the machine's earlier
    /// tokens are refused from then on. Durable when it returns.
    /// `address` is where the machine fetched the boot's script from, when its Hardware
    /// reserves none: it identifies the machine until the boot ends (see [`Self::machine_at`]).
    pub fn mint(
        &self,
        mac: MacAddr,
        address: Option<Ipv4Addr>,
        wanted: impl FnOnce() -> bool,
    ) -> Result<Option<String>, StoreError> {
        let mut boots = self.boots.lock().unwrap_or_else(|p| p.into_inner());
        if !wanted() {
            return Ok(None);
        }
        let record = BootRecord {
            boot: Boot {
                id: rand::random(),
                expires_unix: unix(SystemTime::now() + self.lifetime),
            },
            address,
        };
        // Another machine that fetched its script from this address before has moved on: the
        // address no longer says who it is (its token still does).
        let moved: Vec<(MacAddr, BootRecord)> = boots
            .current
            .iter()
            .filter(|(other, boot)| **other != mac && address.is_some() && boot.address == address)
            .map(|(other, boot)| (*other, *boot))
            .collect();
        for (other, boot) in moved {
            let boot = BootRecord {
                address: None,
                ..boot
            };
            self.store.record_boot(&other, boot)?;
            boots.set(other, Some(boot));
        }
        self.store.record_boot(&mac, record)?;
        boots.set(mac, Some(record));
        Ok(Some(self.token(mac, record.boot)))
    }

    /// The machine whose current boot fetched its script from `address`, its Hardware
    /// reserving none; only until the boot's token expires, as the address may be another
    /// host's by then.
    pub fn machine_at(&self, address: Ipv4Addr) -> Option<MacAddr> {
        let now = unix(SystemTime::now());
        self.boots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .current
            .iter()
            .find(|(_, boot)| boot.address == Some(address) && boot.boot.expires_unix > now)
            .map(|(mac, _)| *mac)
    }

    /// Takes the boots from the store again: another appliance sharing it started or ended
    /// some.
    pub fn reload_boots(&self) -> Result<(), StoreError> {
        let _one = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        self.begin_reload();
        let read = self.store.boots();
        let mut boots = self.boots.lock().unwrap_or_else(|p| p.into_inner());
        match read {
            Ok(read) => boots.replace(read),
            Err(err) => {
                boots.changed_while_reading = None;
                return Err(err);
            }
        }
        Ok(())
    }

    /// From here, a boot started or ended here is kept over what the reload reads.
    fn begin_reload(&self) {
        self.boots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .changed_while_reading = Some(HashSet::new());
    }

    /// About when a boot started: its expiry less the lifetime tokens are minted with.
    pub fn started(&self, boot: Boot) -> SystemTime {
        (UNIX_EPOCH + Duration::from_secs(boot.expires_unix))
            .checked_sub(self.lifetime)
            .unwrap_or(UNIX_EPOCH)
    }

    /// Ends the boots of the machines that `keep` rejects (their workflow ended, or Wisp no
    /// longer owns them): their tokens are refused from then on.
    pub fn end_boots_unless(&self, keep: impl Fn(&MacAddr) -> bool) -> Result<(), StoreError> {
        let mut boots = self.boots.lock().unwrap_or_else(|p| p.into_inner());
        let ended: Vec<MacAddr> = boots
            .current
            .keys()
            .filter(|mac| !keep(mac))
            .copied()
            .collect();
        if ended.is_empty() {
            return Ok(());
        }
        self.store.end_boots(&ended)?;
        for mac in &ended {
            boots.set(*mac, None);
        }
        tracing::info!(
            machines = ended.len(),
            "boots ended: their tokens are refused now"
        );
        Ok(())
    }

    fn tag(&self, mac: MacAddr, boot: Boot) -> Hmac<Sha256> {
        let mut hmac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .expect("HMAC takes keys of any length");
        hmac.update(&mac.0);
        hmac.update(&boot.id.to_be_bytes());
        hmac.update(&boot.expires_unix.to_be_bytes());
        hmac
    }

    fn token(&self, mac: MacAddr, boot: Boot) -> String {
        let tag = self.tag(mac, boot).finalize().into_bytes();
        format!(
            "{}-{:016x}-{:x}-{}",
            hex(&mac.0),
            boot.id,
            boot.expires_unix,
            hex(&tag[..TAG_BYTES])
        )
    }

    /// The machine a token names, if it is the token of that machine's current boot and has
    /// not expired; otherwise why not.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<MacAddr, Refusal> {
        let (mac, boot, tag) = parse(token).ok_or(Refusal::InvalidToken)?;
        let signed = self.tag(mac, boot).verify_truncated_left(&tag).is_ok();
        let current = self
            .boots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .current
            .get(&mac)
            .map(|record| record.boot);
        if !signed {
            // Signed under another key. Only the machine holds its boot's id, so a token that
            // names the current boot is the machine's own, signed before the key was lost.
            if current != Some(boot) {
                return Err(Refusal::InvalidToken);
            }
            tracing::warn!(client = %mac, "a token signed with an earlier key (the key file was replaced) accepted: it names the machine's current boot");
        }
        if boot.expires_unix <= unix(now) {
            return Err(Refusal::ExpiredToken);
        }
        match current {
            Some(current) if current == boot => Ok(mac),
            Some(_) => Err(Refusal::EarlierBoot),
            None => Err(Refusal::EndedBoot(mac, boot)),
        }
    }
}

fn unix(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn parse(token: &str) -> Option<(MacAddr, Boot, Vec<u8>)> {
    let mut parts = token.split('-');
    let mac = MacAddr(unhex(parts.next()?)?.try_into().ok()?);
    let id = u64::from_str_radix(parts.next()?, 16).ok()?;
    let expires_unix = u64::from_str_radix(parts.next()?, 16).ok()?;
    let tag = unhex(parts.next()?)?;
    if parts.next().is_some() || tag.len() != TAG_BYTES {
        return None;
    }
    Some((mac, Boot { id, expires_unix }, tag))
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
    use workflow::store::RedbStore;

    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn tokens(dir: &Path) -> MachineTokens {
        let store = Arc::new(RedbStore::open(dir).unwrap());
        MachineTokens::load(dir, store, DAY).unwrap()
    }

    #[test]
    fn a_token_is_good_for_its_machines_current_boot_only() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = tokens(dir.path());
        let a: MacAddr = "1c:69:7a:11:22:33".parse().unwrap();
        let b: MacAddr = "1c:69:7a:11:22:34".parse().unwrap();
        let now = SystemTime::now();
        let first = tokens.mint(a, None, || true).unwrap().unwrap();
        assert_eq!(tokens.verify(&first, now), Ok(a));
        // Claiming another MAC with A's tag fails.
        let forged = first.replacen("1c697a112233", "1c697a112234", 1);
        assert_eq!(tokens.verify(&forged, now), Err(Refusal::InvalidToken));
        assert_eq!(tokens.verify("garbage", now), Err(Refusal::InvalidToken));
        // The next boot's token replaces it.
        let second = tokens.mint(a, None, || true).unwrap().unwrap();
        assert_eq!(tokens.verify(&first, now), Err(Refusal::EarlierBoot));
        assert_eq!(tokens.verify(&second, now), Ok(a));
        assert_eq!(
            tokens.verify(&second, now + DAY),
            Err(Refusal::ExpiredToken)
        );
        // A restart keeps the boots.
        drop(tokens);
        let tokens = self::tokens(dir.path());
        assert_eq!(tokens.verify(&second, now), Ok(a));
        let of_b = tokens.mint(b, None, || true).unwrap().unwrap();
        // A's workflow ends: its boot ends, B's goes on.
        tokens.end_boots_unless(|mac| *mac == b).unwrap();
        assert_eq!(
            tokens.verify(&second, now),
            Err(Refusal::EndedBoot(a, parse(&second).unwrap().1))
        );
        assert_eq!(tokens.verify(&of_b, now), Ok(b));
    }

    #[test]
    fn a_reload_of_the_boots_keeps_what_changed_here_while_it_read_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RedbStore::open(dir.path()).unwrap());
        let tokens = MachineTokens::load(dir.path(), Arc::clone(&store) as _, DAY).unwrap();
        let (a, b): (MacAddr, MacAddr) = (
            "1c:69:7a:11:22:33".parse().unwrap(),
            "1c:69:7a:11:22:34".parse().unwrap(),
        );
        let of_a = tokens.mint(a, None, || true).unwrap().unwrap();
        let now = SystemTime::now();
        // The reload reads the store before B boots and A's boot ends here.
        tokens.begin_reload();
        let read = store.boots().unwrap();
        let of_b = tokens.mint(b, None, || true).unwrap().unwrap();
        tokens.end_boots_unless(|mac| *mac == b).unwrap();
        tokens.boots.lock().unwrap().replace(read);
        assert_eq!(tokens.verify(&of_b, now), Ok(b));
        assert_eq!(
            tokens.verify(&of_a, now),
            Err(Refusal::EndedBoot(a, parse(&of_a).unwrap().1))
        );
        // The next reload takes the store as it is.
        tokens.reload_boots().unwrap();
        assert_eq!(tokens.verify(&of_b, now), Ok(b));
    }

    #[test]
    fn the_address_a_boot_started_from_names_its_machine_until_it_ends_or_moves() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = tokens(dir.path());
        let (a, b): (MacAddr, MacAddr) = (
            "1c:69:7a:11:22:33".parse().unwrap(),
            "1c:69:7a:11:22:34".parse().unwrap(),
        );
        let address = Ipv4Addr::new(10, 0, 0, 50);
        tokens.mint(a, Some(address), || true).unwrap();
        assert_eq!(tokens.machine_at(address), Some(a));
        // Kept across a restart, with the boot.
        drop(tokens);
        let tokens = self::tokens(dir.path());
        assert_eq!(tokens.machine_at(address), Some(a));
        // The other DHCP server gives the address to B: it names B now, across restarts too.
        let of_a = tokens.mint(b, Some(address), || true).unwrap();
        assert!(of_a.is_some());
        assert_eq!(tokens.machine_at(address), Some(b));
        drop(tokens);
        let tokens = self::tokens(dir.path());
        assert_eq!(tokens.machine_at(address), Some(b));
        // B's boot ends: the address names nobody.
        tokens.end_boots_unless(|mac| *mac == a).unwrap();
        assert_eq!(tokens.machine_at(address), None);
    }

    #[test]
    fn a_lost_key_does_not_strand_a_machine_mid_install() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = tokens(dir.path());
        let a: MacAddr = "1c:69:7a:11:22:33".parse().unwrap();
        let token = tokens.mint(a, None, || true).unwrap().unwrap();
        let earlier = tokens
            .mint("1c:69:7a:11:22:35".parse().unwrap(), None, || true)
            .unwrap()
            .unwrap();
        let _ = tokens
            .mint("1c:69:7a:11:22:35".parse().unwrap(), None, || true)
            .unwrap()
            .unwrap();
        drop(tokens);
        // The key file is cut short, as a crash could leave an unsynced one.
        std::fs::write(dir.path().join(KEY_FILE), b"short").unwrap();
        let tokens = self::tokens(dir.path());
        let now = SystemTime::now();
        assert_eq!(
            tokens.verify(&token, now),
            Ok(a),
            "the current boot still works"
        );
        assert_eq!(
            tokens.verify(&earlier, now),
            Err(Refusal::InvalidToken),
            "an earlier boot's token, unsigned now, is not"
        );
    }
}
