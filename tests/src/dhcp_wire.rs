//! DHCP on the wire, for the tests that drive many clients: a rack of reserved MACs, perfdhcp
//! simulating them, a capture of what crossed the wire, and the ACKs it holds.
use std::{collections::BTreeMap, net::UdpSocket, process::Stdio, time::Duration};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::{eventually, wisp_ok, Lab, Netns, TempDir, CLIENT_IF, CLIENT_IP, SERVER_IP};

/// Hardware for `count` machines: MAC 02:00:00:00:HH:LL reserves 10.99.(4+HH).LL/16 (perfdhcp's
/// `-b mac=02:00:00:00:00:00 -R count` simulates exactly these MACs).
pub fn rack(count: u16) -> (String, BTreeMap<String, String>) {
    let mut yaml = String::new();
    let mut expected = BTreeMap::new();
    for index in 0..count {
        let (high, low) = (index >> 8, index & 0xff);
        let mac = format!("02:00:00:00:{high:02x}:{low:02x}");
        let address = format!("10.99.{}.{low}", 4 + high);
        yaml.push_str(&format!(
            "---\napiVersion: tinkerbell.org/v1alpha1\nkind: Hardware\nmetadata:\n  name: node-{index}\n  namespace: rack\nspec:\n  interfaces:\n    - dhcp:\n        mac: \"{mac}\"\n        lease_time: 3600\n        ip:\n          address: {address}\n          netmask: 255.255.0.0\n"
        ));
        expected.insert(mac, address);
    }
    (yaml, expected)
}

/// Every lease the daemon holds: MAC → address.
pub fn leases(lab: &Lab) -> BTreeMap<String, String> {
    leases_on(&lab.server)
}

/// Every lease the daemon in `netns` holds: MAC → address.
pub fn leases_on(netns: &Netns) -> BTreeMap<String, String> {
    let leases: Value =
        serde_json::from_str(&wisp_ok(netns, &["get", "leases", "-o", "json"])).expect("JSON");
    leases
        .as_array()
        .expect("a list")
        .iter()
        .map(|lease| {
            (
                lease["mac"].as_str().expect("mac").to_string(),
                lease["address"].as_str().expect("address").to_string(),
            )
        })
        .collect()
}

/// perfdhcp from the client side with `args`, for the rack's MACs. On an interface it acts as
/// a relay agent (giaddr is its address), so the replies come back to it on port 67.
pub fn perfdhcp(lab: &Lab, args: &[&str]) -> std::process::Output {
    let mut all = vec!["-4", "-l", CLIENT_IF, "-b", "mac=02:00:00:00:00:00"];
    all.extend_from_slice(args);
    lab.client.exec("perfdhcp", &all)
}

/// dumpcap on the client side, capturing DHCP.
pub struct Capture {
    dumpcap: std::process::Child,
    file: std::path::PathBuf,
}

impl Capture {
    /// Starts capturing; returns once the capture is live (a marker sent through it shows).
    pub fn start(lab: &Lab, work: &TempDir) -> Capture {
        let file = work.join("dhcp.pcap");
        let dumpcap = lab
            .client
            .command("dumpcap")
            .args(["-i", CLIENT_IF, "-B", "64", "-f", "udp port 67", "-w"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dumpcap");
        captured_marker(lab, &file, "start");
        Capture { dumpcap, file }
    }

    /// Stops once a marker sent now shows, so that the file holds everything before it.
    pub fn stop(mut self, lab: &Lab) -> std::path::PathBuf {
        captured_marker(lab, &self.file, "end");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.dumpcap.id() as i32),
            Signal::SIGINT,
        )
        .expect("stop dumpcap");
        self.dumpcap.wait().expect("dumpcap");
        self.file.clone()
    }
}

/// The ACKs in a capture: MAC → the address it was ACKed. A MAC ACKed two addresses fails.
pub fn acks(lab: &Lab, capture: &std::path::Path) -> BTreeMap<String, String> {
    let fields = lab.server.exec_ok(
        "tshark",
        &[
            "-r",
            capture.to_str().expect("utf-8"),
            "-Y",
            "dhcp.option.dhcp == 5",
            "-T",
            "fields",
            "-E",
            "occurrence=f",
            "-e",
            "dhcp.hw.mac_addr",
            "-e",
            "dhcp.ip.your",
        ],
    );
    let mut acked = BTreeMap::new();
    for line in fields.lines() {
        let (mac, address) = line.split_once('\t').expect("two fields");
        let previous = acked.insert(mac.to_string(), address.to_string());
        assert!(
            previous.is_none_or(|p| p == address),
            "{mac} was ACKed two addresses"
        );
    }
    acked
}

/// Sends a marker datagram through the capture filter from the client side, again and again,
/// until the capture file holds it.
pub fn captured_marker(lab: &Lab, capture: &std::path::Path, name: &str) {
    let marker = format!("wisp-capture-marker-{name}");
    let socket = lab
        .client
        .within(|| UdpSocket::bind((CLIENT_IP, 0)).expect("bind"));
    let filter = format!("udp.payload contains \"{marker}\"");
    eventually(&format!("the capture holds the {name} marker"), || {
        // Not DHCP: the gate drops it as malformed, and nothing answers it.
        lab.client.within(|| {
            socket
                .send_to(marker.as_bytes(), (SERVER_IP, 67))
                .expect("send")
        });
        std::thread::sleep(Duration::from_millis(100));
        let seen = lab.server.exec(
            "tshark",
            &["-r", capture.to_str().expect("utf-8"), "-Y", &filter],
        );
        !seen.stdout.is_empty()
    });
}
