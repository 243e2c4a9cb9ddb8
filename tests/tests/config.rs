//! `wisp serve`'s configuration through the real binary: a flag beats a `WISP_*` variable,
//! which beats the file, which beats the default; the file's unknown keys are refused by name.
//! `--print-config` exits before anything is opened, so these need no root.
use std::process::{Command, Output};

use wisp_tests::{output_text, wisp_binary, TempDir};

fn serve(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(wisp_binary());
    // Only the variables each case sets: none inherited from whoever runs the tests.
    for (name, _) in std::env::vars() {
        if name.starts_with("WISP_") {
            command.env_remove(name);
        }
    }
    command
        .arg("serve")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run wisp serve")
}

fn printed(args: &[&str], env: &[(&str, &str)]) -> toml::Table {
    let output = serve(args, env);
    assert!(output.status.success(), "{}", output_text(&output));
    toml::from_str(&String::from_utf8_lossy(&output.stdout)).expect("--print-config prints TOML")
}

#[test]
fn flag_beats_environment_beats_file_beats_default() {
    let dir = TempDir::new("config");
    let file = dir.0.join("wisp.toml");
    std::fs::write(
        &file,
        "interface = \"from-file\"\nboot-http-port = 8001\nworker-api-port = 9001\ntftp-timeout = \"7s\"\n",
    )
    .expect("write the file");
    let config = file.to_str().expect("a UTF-8 path");
    let settings = printed(
        &[
            "--config",
            config,
            "--print-config",
            "--boot-http-port",
            "8003",
        ],
        &[
            ("WISP_BOOT_HTTP_PORT", "8002"),
            ("WISP_WORKER_API_PORT", "9002"),
        ],
    );
    assert_eq!(settings["interface"].as_str(), Some("from-file"));
    assert_eq!(
        settings["boot-http-port"].as_integer(),
        Some(8003),
        "the flag"
    );
    assert_eq!(
        settings["worker-api-port"].as_integer(),
        Some(9002),
        "the variable"
    );
    assert_eq!(settings["tftp-timeout"].as_str(), Some("7s"), "the file");
    assert_eq!(
        settings["chainload-window"].as_str(),
        Some("5m"),
        "the default"
    );
    assert_eq!(settings["dhcp-mode"].as_str(), Some("reservation"));
    assert_eq!(
        settings["assets-dir"].as_str(),
        Some("/var/lib/wisp/assets"),
        "under the data directory"
    );

    // WISP_CONFIG names the file as --config does.
    let settings = printed(
        &["--print-config"],
        &[("WISP_CONFIG", config), ("WISP_DHCP_MODE", "proxy")],
    );
    assert_eq!(settings["interface"].as_str(), Some("from-file"));
    assert_eq!(settings["dhcp-mode"].as_str(), Some("proxy"));
}

#[test]
fn unknown_keys_and_bad_values_are_refused_by_name() {
    let dir = TempDir::new("config-bad");
    let file = dir.0.join("wisp.toml");
    std::fs::write(&file, "interface = \"br0\"\nboot-port = 8080\n").expect("write the file");
    let refused = serve(
        &["--config", file.to_str().expect("UTF-8"), "--print-config"],
        &[],
    );
    assert!(!refused.status.success());
    let text = output_text(&refused);
    assert!(text.contains("unknown field `boot-port`"), "{text}");
    assert!(text.contains("wisp.toml"), "the file is named: {text}");

    let refused = serve(
        &["--print-config"],
        &[("WISP_INTERFACE", "br0"), ("WISP_TFTP_TIMEOUT", "soon")],
    );
    assert!(!refused.status.success());
    let text = output_text(&refused);
    assert!(
        text.contains("WISP_TFTP_TIMEOUT") || text.contains("tftp-timeout"),
        "{text}"
    );

    // The API needs its token on every listen address, so it may listen beyond loopback.
    let open = printed(
        &[
            "--print-config",
            "-i",
            "br0",
            "--listen",
            "0.0.0.0:7480",
            "--data-dir",
            "/srv/wisp",
        ],
        &[],
    );
    assert_eq!(open["listen"].as_str(), Some("0.0.0.0:7480"));
    assert_eq!(open["api-token-file"].as_str(), Some("/srv/wisp/api.token"));

    let refused = serve(
        &[
            "--print-config",
            "-i",
            "br0",
            "--data-dir",
            "/srv/wisp/data",
            "--assets-dir",
            "/srv/wisp",
        ],
        &[],
    );
    assert!(!refused.status.success());
    assert!(
        output_text(&refused).contains("holds the data directory"),
        "an assets directory around the data directory would publish the token key: {}",
        output_text(&refused)
    );

    let refused = serve(&["--print-config"], &[]);
    assert!(!refused.status.success());
    assert!(
        output_text(&refused).contains("no interface to serve"),
        "{}",
        output_text(&refused)
    );
}

#[test]
fn printed_settings_read_back_as_a_file() {
    let printed = serve(
        &["-i", "br0", "--chainload-window", "2m", "--print-config"],
        &[],
    );
    assert!(printed.status.success(), "{}", output_text(&printed));
    let text = String::from_utf8_lossy(&printed.stdout).into_owned();
    assert!(text.contains("chainload-window = \"2m\""), "{text}");
    let dir = TempDir::new("config-round-trip");
    let file = dir.0.join("wisp.toml");
    std::fs::write(&file, &text).expect("write the file");
    let again = serve(
        &["--config", file.to_str().expect("UTF-8"), "--print-config"],
        &[],
    );
    assert!(again.status.success(), "{}", output_text(&again));
    assert_eq!(String::from_utf8_lossy(&again.stdout), text);
}

#[test]
fn zero_intervals_and_limits_are_refused() {
    for (flag, value) in [
        ("--reconcile-interval", "0s"),
        ("--tftp-timeout", "0s"),
        ("--tftp-max-transfers", "0"),
        ("--tftp-max-per-client", "0"),
        ("--http-max-per-client", "0"),
    ] {
        let refused = serve(&["-i", "br0", flag, value, "--print-config"], &[]);
        assert!(!refused.status.success(), "{flag} {value} was taken");
        let text = output_text(&refused);
        assert!(text.contains(&flag[2..]), "{flag}: {text}");
    }
    // An assets directory that resolves, through `..`, to one holding the data directory.
    let refused = serve(
        &[
            "-i",
            "br0",
            "--data-dir",
            "/srv/wisp/data",
            "--assets-dir",
            "/srv/wisp/data/..",
            "--print-config",
        ],
        &[],
    );
    assert!(
        output_text(&refused).contains("holds the data directory"),
        "{}",
        output_text(&refused)
    );
}
