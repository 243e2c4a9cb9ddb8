//! The actions the agent runs natively, chosen by image name and taking the environment of
//! Tinkerbell's action images of the same names, so that templates written for Tinkerbell run
//! without a container registry. Any other image goes to a container runtime.
mod cexec;
mod container;
mod image2disk;
mod mount;
mod power;
mod writefile;

#[cfg(fuzzing)]
pub use image2disk::fuzz_image;

use std::{
    collections::{BTreeMap, VecDeque},
    io::{BufRead, BufReader, Read},
    os::unix::process::CommandExt,
    process::{Child, Command},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

pub use image2disk::Format;

use crate::output::Output;
pub use power::restart;

/// One action to run, as the worker API handed it out, with the time it must end by.
pub struct Invocation {
    pub image: String,
    pub command: Vec<String>,
    pub volumes: Vec<String>,
    pub environment: BTreeMap<String, String>,
    /// The network namespace a container joins (`namespaces.network`); the provisioning OS's
    /// (`host`) when unset, since it has no container network of its own.
    pub network: Option<String>,
    /// The PID namespace a container joins (`namespaces.pid`, else `pid`); the runtime's default
    /// when unset.
    pub pid: Option<String>,
    pub deadline: Option<Instant>,
    /// The addresses of the appliances sharing a store, which serve the same files: a URL
    /// naming one of them is fetched from the next when that one stops answering.
    pub appliances: Vec<String>,
    /// Where what it prints and how far it is go, for Wisp.
    pub output: Output,
}

/// How an action that succeeded ends: with a message for its report, or by asking the agent
/// to restart the machine once the success is reported.
#[derive(Debug, PartialEq, Eq)]
pub enum Succeeded {
    Done(String),
    Reboot,
    Kexec,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    #[error("{0}")]
    Failed(String),
    #[error("timed out")]
    TimedOut,
}

pub type ActionResult<T> = Result<T, ActionError>;

pub fn fail(message: impl Into<String>) -> ActionError {
    ActionError::Failed(message.into())
}

/// The action an image names: `quay.io/tinkerbell-actions/image2disk:v1.0.0` → `image2disk`.
pub fn builtin_name(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split(':').next().unwrap_or(last)
}

pub fn run(invocation: &Invocation) -> ActionResult<Succeeded> {
    match builtin_name(&invocation.image) {
        "image2disk" => image2disk::run(invocation),
        "cexec" => cexec::run(invocation),
        "writefile" => writefile::run(invocation),
        "reboot" => Ok(Succeeded::Reboot),
        "kexec" => power::load_kexec(invocation),
        _ => container::run(invocation),
    }
}

impl Invocation {
    /// A variable the action needs.
    pub fn required(&self, name: &str) -> ActionResult<&str> {
        self.environment
            .get(name)
            .map(String::as_str)
            .filter(|value| !value.is_empty())
            .ok_or_else(|| fail(format!("{name} is not set in the action's environment")))
    }

    pub fn optional(&self, name: &str) -> Option<&str> {
        self.environment
            .get(name)
            .map(String::as_str)
            .filter(|value| !value.is_empty())
    }

    /// Go's strconv.ParseBool, which Tinkerbell's actions use, plus `y`/`yes` for CHROOT.
    pub fn flag(&self, name: &str) -> ActionResult<bool> {
        match self.optional(name) {
            None => Ok(false),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True" | "y" | "Y" | "yes" | "YES") => {
                Ok(true)
            }
            Some("0" | "f" | "F" | "false" | "FALSE" | "False" | "n" | "N" | "no" | "NO") => {
                Ok(false)
            }
            Some(other) => Err(fail(format!("{name}={other:?} is not a boolean"))),
        }
    }

    pub fn check_deadline(&self) -> ActionResult<()> {
        match self.deadline {
            Some(deadline) if Instant::now() >= deadline => Err(ActionError::TimedOut),
            _ => Ok(()),
        }
    }
}

/// Lines of a failed command's output kept for its report.
const TAIL_LINES: usize = 5;
/// The most of a line read at once, in bytes.
const LINE_PIECE: u64 = 1 << 16;

/// The PATH a container gets when its image sets none (Docker's and BuildKit's default), which
/// is what Tinkerbell's action images, built `FROM scratch`, run with.
pub const CONTAINER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Gives a command the environment Tinkerbell's action container would have: the default
/// PATH and HOME, then the action's own variables (which may override them), and nothing of
/// the provisioning OS's.
pub fn container_environment(command: &mut Command, invocation: &Invocation) {
    command
        .env_clear()
        .env("PATH", CONTAINER_PATH)
        .env("HOME", "/root")
        .envs(&invocation.environment);
}

/// Runs a command to its end or to the deadline, when it is killed. What it prints goes to the
/// console and to Wisp as it comes; a failure's message carries the exit status and the last
/// lines it printed.
pub fn run_command(
    invocation: &Invocation,
    command: &mut Command,
    what: &str,
) -> ActionResult<String> {
    // Both streams into one pipe, as a terminal shows them: the order of its lines is the
    // order it wrote them in, across the two.
    let (pipe, writer) =
        std::io::pipe().map_err(|err| fail(format!("cannot start {what}: {err}")))?;
    let second_writer = writer
        .try_clone()
        .map_err(|err| fail(format!("cannot start {what}: {err}")))?;
    // Its own process group, so that a timeout ends everything it started, not just the
    // shell at its top.
    let spawned = command
        .process_group(0)
        // Nothing to read: a command that waits for input would otherwise hang to its timeout.
        .stdin(std::process::Stdio::null())
        .stdout(writer)
        .stderr(second_writer)
        .spawn();
    // The command keeps its copies of the pipe's writing end: closed here, so that the pipe
    // ends when the process (and what it left behind) closes its own.
    command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child: Child = spawned.map_err(|err| fail(format!("cannot start {what}: {err}")))?;
    // Read on a thread, so that a chatty command cannot block on a full pipe.
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
    let (done, reader_done) = mpsc::channel::<()>();
    {
        let (tail, output) = (Arc::clone(&tail), invocation.output.clone());
        std::thread::spawn(move || {
            // Bytes that are not UTF-8 are shown as U+FFFD rather than end the reading (which
            // would close the pipe under the command); a line without end comes in pieces.
            let mut pipe = BufReader::new(pipe);
            let mut bytes = Vec::new();
            while matches!(
                pipe.by_ref().take(LINE_PIECE).read_until(b'\n', &mut bytes),
                Ok(read) if read > 0
            ) {
                let text = String::from_utf8_lossy(&bytes);
                let line = text.trim_end_matches(['\n', '\r']).to_string();
                bytes.clear();
                eprintln!("{line}");
                let line = wisp_proto::output_line(&line);
                let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
                if tail.len() == TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line.clone());
                drop(tail);
                output.line(line);
            }
            let _ = done.send(());
        });
    }
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|err| fail(format!("waiting for {what}: {err}")))?
        {
            break status;
        }
        if invocation.check_deadline().is_err() {
            let group = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
            return Err(ActionError::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // A process it left behind may hold the pipe open: wait for the rest of the output only
    // briefly.
    let _ = reader_done.recv_timeout(Duration::from_secs(2));
    if status.success() {
        return Ok(format!("{what} succeeded"));
    }
    let tail = tail.lock().unwrap_or_else(|p| p.into_inner());
    let printed: Vec<&str> = tail.iter().map(String::as_str).collect();
    let mut message = format!("{what} failed ({status})");
    if !printed.is_empty() {
        message.push_str(&format!(": {}", printed.join(" | ")));
    }
    Err(fail(message))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// An action of `image` with the variables `pairs` and nothing else.
    pub fn invocation_of(image: &str, pairs: &[(&str, &str)]) -> Invocation {
        Invocation {
            image: image.into(),
            command: Vec::new(),
            volumes: Vec::new(),
            environment: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            network: None,
            pid: None,
            deadline: None,
            appliances: Vec::new(),
            output: Output::default(),
        }
    }

    fn invocation(pairs: &[(&str, &str)], timeout: Option<Duration>) -> Invocation {
        Invocation {
            deadline: timeout.map(|t| Instant::now() + t),
            ..invocation_of("cexec", pairs)
        }
    }

    #[test]
    fn images_name_their_builtin() {
        assert_eq!(
            builtin_name("quay.io/tinkerbell-actions/image2disk:v1.0.0"),
            "image2disk"
        );
        assert_eq!(
            builtin_name("quay.io/tinkerbell/actions/writefile:latest"),
            "writefile"
        );
        assert_eq!(builtin_name("cexec"), "cexec");
        assert_eq!(builtin_name("ghcr.io/x/kexec@sha256:abc"), "kexec");
        assert_eq!(builtin_name("localhost:5000/reboot"), "reboot");
    }

    #[test]
    fn flags_read_as_tinkerbell_reads_them() {
        let c = invocation(
            &[("A", "true"), ("B", "y"), ("C", "0"), ("D", "maybe")],
            None,
        );
        assert_eq!(c.flag("A"), Ok(true));
        assert_eq!(c.flag("B"), Ok(true));
        assert_eq!(c.flag("C"), Ok(false));
        assert_eq!(c.flag("MISSING"), Ok(false));
        assert!(c.flag("D").unwrap_err().to_string().contains("D=\"maybe\""));
        assert!(c
            .required("MISSING")
            .unwrap_err()
            .to_string()
            .contains("MISSING is not set"));
    }

    #[test]
    fn cexec_runs_with_the_environment_of_an_action_container() {
        let out = std::env::temp_dir().join(format!("wisp-cexec-env-{}", std::process::id()));
        let c = invocation(
            &[
                ("DEFAULT_INTERPRETER", "/bin/sh -c"),
                (
                    "CMD_LINE",
                    &format!("echo \"$PATH|$HOME|$DISK|$NO_COLOR\" > {}", out.display()),
                ),
                ("DISK", "/dev/nvme0n1"),
            ],
            Some(Duration::from_secs(30)),
        );
        // The agent's own variables (NO_COLOR is set by the provisioning OS) stay out.
        std::env::set_var("NO_COLOR", "1");
        cexec::run(&c).expect("cexec ran");
        let seen = std::fs::read_to_string(&out).expect("the command's output");
        let _ = std::fs::remove_file(&out);
        assert_eq!(seen, format!("{CONTAINER_PATH}|/root|/dev/nvme0n1|\n"));
    }

    #[test]
    fn cexec_without_an_interpreter_runs_commands_separated_by_semicolons_as_tinkerbells() {
        let out = std::env::temp_dir().join(format!("wisp-cexec-seq-{}", std::process::id()));
        let line = format!("touch {0}.a; touch {0}.b", out.display());
        let c = invocation(&[("CMD_LINE", &line)], Some(Duration::from_secs(30)));
        cexec::run(&c).expect("both commands ran");
        for suffix in ["a", "b"] {
            let made = out.with_extension(suffix);
            assert!(made.exists(), "{}", made.display());
            let _ = std::fs::remove_file(made);
        }
        // They run in turn until one fails; the failure names it.
        let line = format!("true; false; touch {}.c", out.display());
        let c = invocation(&[("CMD_LINE", &line)], Some(Duration::from_secs(30)));
        let err = cexec::run(&c).unwrap_err().to_string();
        assert!(err.contains("\"false\" failed (exit status: 1)"), "{err}");
        assert!(!out.with_extension("c").exists());
        // A command reading its input sees none, rather than waiting to its timeout.
        let c = invocation(
            &[
                ("DEFAULT_INTERPRETER", "/bin/sh -c"),
                ("CMD_LINE", "read line"),
            ],
            Some(Duration::from_secs(30)),
        );
        let err = cexec::run(&c).unwrap_err();
        assert_ne!(err, ActionError::TimedOut);
    }

    #[test]
    fn commands_report_failure_and_are_killed_at_the_deadline() {
        let c = invocation(&[], Some(Duration::from_millis(300)));
        let err = run_command(
            &c,
            Command::new("sh").args(["-c", "echo checking; echo broken >&2; exit 3"]),
            "the probe",
        )
        .unwrap_err();
        // What it printed on either stream, and all of it for Wisp.
        let message = err.to_string();
        assert!(
            message.starts_with("the probe failed (exit status: 3): "),
            "{message}"
        );
        assert!(
            message.contains("checking") && message.contains("broken"),
            "{message}"
        );
        let sent = c.output.batch().expect("the lines, for Wisp");
        assert_eq!(sent.lines, ["checking", "broken"], "in the order written");
        // Bytes that are not UTF-8 neither stop the reading nor the command.
        let odd = invocation(&[], Some(Duration::from_secs(30)));
        let err = run_command(
            &odd,
            Command::new("sh").args(["-c", "printf '\\377\\376 odd\\n'; echo after; exit 4"]),
            "the odd one",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("(exit status: 4): \u{fffd}\u{fffd} odd | after"),
            "{err}"
        );
        let started = Instant::now();
        // The shell's child holds the output pipe too; the whole group goes.
        let err = run_command(
            &c,
            Command::new("sh").args(["-c", "sleep 30; true"]),
            "sleep",
        )
        .unwrap_err();
        assert_eq!(err, ActionError::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(10));
        let fresh = invocation(&[], Some(Duration::from_secs(30)));
        assert!(run_command(&fresh, &mut Command::new("true"), "true").is_ok());
        // A process left behind with the pipe open does not hold up the result.
        let started = Instant::now();
        let left = run_command(
            &fresh,
            Command::new("sh").args(["-c", "sleep 20 & exit 0"]),
            "bg",
        );
        assert!(left.is_ok() && started.elapsed() < Duration::from_secs(10));
    }
}
