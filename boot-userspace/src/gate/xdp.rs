//! Loads the embedded XDP program (built from boot-ebpf by build.rs) and drives its maps.
//!
//! The attachment is a bpf_link owned by this process: the kernel detaches it when the process
//! exits, however it exits, so a crash leaves no stale program that blocks the next start.
use std::{collections::BTreeSet, fmt};

use anyhow::{anyhow, Context};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};
use boot_ebpf::{maps, Counter, UnknownMacStat, UnknownPolicy, PROGRAM_NAME};
use serde::{Deserialize, Serialize};

use super::CounterValues;

static PROGRAM_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/wisp-gate"));

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Driver mode: the program runs before the kernel allocates an skb.
    Native,
    /// Generic mode: works on any interface, after skb allocation.
    Skb,
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpMode::Native => "native",
            XdpMode::Skb => "skb",
        })
    }
}

pub struct XdpGate {
    /// Owns the program and its link; dropping it detaches.
    ebpf: Ebpf,
    allowlist: HashMap<MapData, [u8; 6], u8>,
    counters: PerCpuArray<MapData, u64>,
    unknown: HashMap<MapData, [u8; 6], UnknownMacStat>,
}

impl XdpGate {
    /// Loads the program into the kernel without attaching it (tests drive it with
    /// [`XdpGate::test_run`]).
    pub fn load(policy: UnknownPolicy) -> anyhow::Result<XdpGate> {
        raise_memlock_limit();
        // Without the kernel's BTF: the program reads packets only and has no CO-RE
        // relocations for it to resolve, and parsing it (several MiB) would add 25 MiB to
        // Wisp's peak memory and keep 11 MiB of it.
        let mut ebpf = EbpfLoader::new()
            .btf(None)
            .load(PROGRAM_OBJECT)
            .context("loading the eBPF object")?;
        let mut policy_map: Array<_, u32> = take_map(&mut ebpf, maps::POLICY)?;
        policy_map
            .set(0, policy as u32, 0)
            .context("setting the unknown-MAC policy")?;
        let allowlist = take_map(&mut ebpf, maps::ALLOWLIST)?;
        let counters = take_map(&mut ebpf, maps::COUNTERS)?;
        let unknown = take_map(&mut ebpf, maps::UNKNOWN_MACS)?;
        let program: &mut Xdp = program(&mut ebpf)?;
        program
            .load()
            .context("the kernel rejected the XDP program")?;
        Ok(XdpGate {
            ebpf,
            allowlist,
            counters,
            unknown,
        })
    }

    pub fn attach(
        interface: &str,
        mode: XdpMode,
        policy: UnknownPolicy,
    ) -> anyhow::Result<XdpGate> {
        let mut gate = XdpGate::load(policy)?;
        let flags = match mode {
            XdpMode::Native => aya::programs::XdpMode::Driver,
            XdpMode::Skb => aya::programs::XdpMode::Skb,
        };
        program(&mut gate.ebpf)?
            .attach(interface, flags)
            .with_context(|| format!("attaching to {interface}"))?;
        Ok(gate)
    }

    /// Runs one frame through the loaded program (BPF_PROG_TEST_RUN) and returns the XDP action.
    pub fn test_run(&mut self, frame: &[u8]) -> anyhow::Result<u32> {
        let program: &mut Xdp = program(&mut self.ebpf)?;
        let options = TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::new()
        };
        Ok(program
            .test_run(options)
            .with_context(|| format!("test run of a {}-byte frame", frame.len()))?
            .return_value)
    }

    pub fn sync_allowlist(&mut self, wanted: &BTreeSet<[u8; 6]>) -> anyhow::Result<()> {
        let present: BTreeSet<[u8; 6]> = self
            .allowlist
            .keys()
            .collect::<Result<_, _>>()
            .context("reading the allowlist")?;
        for mac in present.difference(wanted) {
            self.allowlist
                .remove(mac)
                .context("removing from the allowlist")?;
        }
        for mac in wanted.difference(&present) {
            self.allowlist
                .insert(mac, 1, 0)
                .context("adding to the allowlist")?;
        }
        Ok(())
    }

    pub fn allowlist_len(&self) -> anyhow::Result<usize> {
        Ok(self.allowlist.keys().count())
    }

    /// The counters, summed over CPUs.
    pub fn counters(&self) -> anyhow::Result<CounterValues> {
        let mut values = [0; Counter::COUNT as usize];
        for (index, value) in values.iter_mut().enumerate() {
            let per_cpu = self
                .counters
                .get(&(index as u32), 0)
                .context("reading the counters")?;
            *value = per_cpu.iter().sum();
        }
        Ok(values)
    }

    pub fn unknown_macs(&self) -> anyhow::Result<Vec<([u8; 6], UnknownMacStat)>> {
        self.unknown
            .iter()
            .collect::<Result<_, _>>()
            .context("reading the unknown-MAC map")
    }
}

fn program(ebpf: &mut Ebpf) -> anyhow::Result<&mut Xdp> {
    ebpf.program_mut(PROGRAM_NAME)
        .ok_or_else(|| anyhow!("the eBPF object has no program {PROGRAM_NAME}"))?
        .try_into()
        .context("the gate program is not an XDP program")
}

fn take_map<M>(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<M>
where
    M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("the eBPF object has no map {name}"))?;
    M::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; newer ones ignore it.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid struct; failure only matters on old kernels, where the
    // load error that follows says what went wrong.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}
