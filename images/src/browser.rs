//! A real browser for the lab: Debian's headless Chromium, driven through the DevTools
//! protocol over a pipe (`--remote-debugging-pipe`: JSON messages, each ended by a NUL, in on
//! fd 3 and out on fd 4), so that no WebSocket client is needed. The rack page's test and the
//! demo look at the page with it. Killed on drop.
use std::{
    io::{BufRead, BufReader, Write},
    os::{fd::AsRawFd, unix::process::CommandExt},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::qemu::in_netns;

pub struct Browser {
    child: Child,
    commands: std::fs::File,
    replies: BufReader<std::fs::File>,
    next_id: u64,
    /// The page's session (`Target.attachToTarget`, flattened).
    session: String,
}

impl Browser {
    /// Chromium in `netns`, with one page open at `url`, `width`×`height` pixels, its profile
    /// in `profile`.
    pub fn open(
        netns: &str,
        url: &str,
        (width, height): (u32, u32),
        profile: &std::path::Path,
    ) -> anyhow::Result<Browser> {
        let (to_browser_read, to_browser_write) = nix::unistd::pipe()?;
        let (from_browser_read, from_browser_write) = nix::unistd::pipe()?;
        let (child_in, child_out) = (to_browser_read.as_raw_fd(), from_browser_write.as_raw_fd());
        let mut command = in_netns(netns, "chromium");
        command
            .args([
                "--headless=new",
                // As root, in a lab: Chromium's sandbox refuses to run as root.
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-pipe",
                &format!("--window-size={width},{height}"),
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // The pipe's ends become fds 3 and 4 of the browser (through `ip netns exec`).
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                // Moved above 4 first, so that placing one cannot close the other.
                let (high_in, high_out) = (
                    nix::libc::fcntl(child_in, nix::libc::F_DUPFD, 10),
                    nix::libc::fcntl(child_out, nix::libc::F_DUPFD, 10),
                );
                if high_in < 0
                    || high_out < 0
                    || nix::libc::dup2(high_in, 3) < 0
                    || nix::libc::dup2(high_out, 4) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .context("starting chromium (cargo xtask setup installs it)")?;
        drop(to_browser_read);
        drop(from_browser_write);
        let mut browser = Browser {
            child,
            commands: std::fs::File::from(to_browser_write),
            replies: BufReader::new(std::fs::File::from(from_browser_read)),
            next_id: 0,
            session: String::new(),
        };
        let target = browser.call(None, "Target.createTarget", json!({ "url": url }))?;
        let target_id = target["targetId"]
            .as_str()
            .context("chromium made no page")?
            .to_string();
        let attached = browser.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
        )?;
        browser.session = attached["sessionId"]
            .as_str()
            .context("chromium gave no session")?
            .to_string();
        Ok(browser)
    }

    /// Sends a DevTools command and returns its result.
    fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> anyhow::Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message)?;
        bytes.push(0);
        self.commands
            .write_all(&bytes)
            .context("writing to chromium")?;
        loop {
            let mut reply = Vec::new();
            let read = self
                .replies
                .read_until(0, &mut reply)
                .context("reading from chromium")?;
            if read == 0 {
                bail!("chromium closed its pipe");
            }
            reply.pop();
            let reply: Value = serde_json::from_slice(&reply).context("chromium's reply")?;
            if reply["id"] == id {
                if let Some(error) = reply.get("error") {
                    bail!("{method}: {error}");
                }
                return Ok(reply["result"].clone());
            }
        }
    }

    /// Evaluates `expression` in the page and returns its value.
    pub fn eval(&mut self, expression: &str) -> anyhow::Result<Value> {
        let session = self.session.clone();
        let result = self.call(
            Some(&session),
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        )?;
        if let Some(exception) = result.get("exceptionDetails") {
            bail!("{expression}: {exception}");
        }
        Ok(result["result"]["value"].clone())
    }

    /// Waits until `expression` is true in the page.
    pub fn wait_for(
        &mut self,
        what: &str,
        expression: &str,
        limit: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        while self.eval(expression)? != json!(true) {
            if Instant::now() > deadline {
                bail!("the page did not show {what} within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// A PNG of the page as it shows now.
    pub fn screenshot(&mut self) -> anyhow::Result<Vec<u8>> {
        use base64::Engine as _;
        let session = self.session.clone();
        let shot = self.call(
            Some(&session),
            "Page.captureScreenshot",
            json!({ "format": "png" }),
        )?;
        let data = shot["data"].as_str().context("no PNG from chromium")?;
        Ok(base64::engine::general_purpose::STANDARD.decode(data)?)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
