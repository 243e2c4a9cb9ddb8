//! The CLI's side of the API: JSON over HTTP, with server errors turned into kubectl-style text.
use std::{path::Path, time::Duration};

use serde::{de::DeserializeOwned, Serialize};

use boot_userspace::api::ErrorBody;

/// An error for the user: printed after `error: `, and the process exits non-zero.
#[derive(Debug)]
pub struct CliError(pub String);

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

pub type CliResult<T> = Result<T, CliError>;

pub struct Client {
    base: String,
    agent: ureq::Agent,
    authorization: String,
}

impl Client {
    /// A client of the API at `base`, with the token read from `token_file`.
    pub fn new(base: &str, token_file: &Path) -> CliResult<Self> {
        let bytes = std::fs::read(token_file).map_err(|err| {
            CliError(format!(
                "cannot read the API token {} ({err}); run as the daemon's user, or pass \
                 --api-token-file (the daemon's api-token-file setting)",
                token_file.display()
            ))
        })?;
        let token = boot_userspace::api::auth::parse(&bytes)
            .ok_or_else(|| CliError(format!("{} holds no API token", token_file.display())))?;
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            agent,
            authorization: format!("Bearer {token}"),
        })
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> CliResult<T> {
        self.get_with_query(path, &[])
    }

    /// GET with query parameters, which ureq percent-encodes.
    pub fn get_with_query<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> CliResult<T> {
        let request = query.iter().fold(
            self.agent
                .get(&self.url(path))
                .header("authorization", &self.authorization),
            |request, (key, value)| request.query(*key, *value),
        );
        self.finish(path, request.call())
    }

    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> CliResult<T> {
        let request = self
            .agent
            .delete(&self.url(path))
            .header("authorization", &self.authorization);
        self.finish(path, request.call())
    }

    pub fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> CliResult<T> {
        let request = self
            .agent
            .post(&self.url(path))
            .header("authorization", &self.authorization);
        self.finish(path, request.send_json(body))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn finish<T: DeserializeOwned>(
        &self,
        path: &str,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> CliResult<T> {
        let mut response = response.map_err(|err| {
            CliError(format!(
                "cannot reach the Wisp daemon at {} ({err}); is `wisp serve` running?",
                self.base
            ))
        })?;
        let status = response.status();
        let body = response
            .body_mut()
            .read_to_string()
            .map_err(|err| CliError(format!("reading the reply to {path}: {err}")))?;
        if status.is_success() {
            return serde_json::from_str(&body)
                .map_err(|err| CliError(format!("unexpected reply to {path}: {err}")));
        }
        match serde_json::from_str::<ErrorBody>(&body) {
            Ok(error) => {
                let mut text = format!("{} ({})", error.message, error.reason);
                for detail in &error.details {
                    text.push_str("\n  ");
                    text.push_str(detail);
                }
                Err(CliError(text))
            }
            Err(_) => Err(CliError(format!(
                "{path}: the server answered {status}: {}",
                body.trim()
            ))),
        }
    }
}
