//! Who may use the API: whoever can read the token file. The API changes what every managed
//! machine runs (an apply can put a command in a workflow), so a local process or a container on
//! the host's network must not reach it just because loopback is open to them.
//!
//! The token is 32 random bytes, as 64 hex characters, in a file the daemon creates 0600 in its
//! data directory (or where `api-token-file` says). The CLI reads the same file
//! (`--api-token-file`), and a Prometheus server can too (`authorization.credentials_file`).
use std::path::Path;

use anyhow::Context as _;
use axum::{
    extract::{Request, State},
    http::{header, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};

use super::ErrorBody;

/// Where the daemon keeps the token, and the CLI looks for it, unless told otherwise.
pub const DEFAULT_TOKEN_FILE: &str = "/var/lib/wisp/api.token";
const TOKEN_FILE: &str = "api.token";

/// The API's bearer token, kept as its digest.
#[derive(Clone)]
pub struct ApiToken {
    digest: [u8; 32],
}

impl ApiToken {
    /// Reads the token file, or creates it on first start.
    pub fn load_or_create(path: &Path) -> anyhow::Result<ApiToken> {
        let token = workflow::store::private::load_or_create_secret(
            path,
            |bytes| parse(bytes).is_some(),
            || format!("{}\n", hex(&rand::random::<[u8; 32]>())).into_bytes(),
        )
        .with_context(|| format!("loading the API token {}", path.display()))?;
        let token = parse(&token).context("the API token file holds no token")?;
        Ok(ApiToken {
            digest: Sha256::digest(token.as_bytes()).into(),
        })
    }

    /// The default file: `<data-dir>/api.token`.
    pub fn default_path(data_dir: &Path) -> std::path::PathBuf {
        data_dir.join(TOKEN_FILE)
    }

    /// Whether `presented` is the token. The digests are compared, not the tokens, so that the
    /// time the comparison takes tells nothing about the token's bytes.
    fn accepts(&self, presented: &str) -> bool {
        <[u8; 32]>::from(Sha256::digest(presented.as_bytes())) == self.digest
    }
}

/// The token in a token file's bytes: one line of at least 32 printable ASCII characters.
pub fn parse(bytes: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(bytes).ok()?.trim();
    (text.len() >= 32 && text.bytes().all(|b| b.is_ascii_graphic())).then_some(text)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The cookie a browser holds the token in, once the rack page's form has sent it
/// (`POST /v1/session`).
pub const SESSION_COOKIE: &str = "wisp_token";

/// Refuses a request without the token (`Authorization: Bearer <token>`), with 401. A read
/// (GET or HEAD) may carry it in the session cookie instead, as the rack page's requests do:
/// only reads, so that a page elsewhere that gets a browser to send a request with its cookie
/// changes nothing (and SameSite=Strict keeps the cookie off such requests anyway).
pub async fn require_token(
    State(token): State<ApiToken>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if presented.is_some_and(|presented| token.accepts(presented.trim())) {
        return next.run(request).await;
    }
    let read = matches!(
        *request.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    if read && session_cookie(&request).is_some_and(|cookie| token.accepts(cookie)) {
        return next.run(request).await;
    }
    let message = match presented {
        Some(_) => "the API token is wrong",
        None => "the API needs its token: `Authorization: Bearer <the contents of the token file>` (the CLI reads it with --api-token-file)",
    };
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        axum::Json(ErrorBody {
            reason: "Unauthorized".into(),
            message: message.into(),
            details: Vec::new(),
        }),
    )
        .into_response()
}

fn session_cookie(request: &Request) -> Option<&str> {
    request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(SESSION_COOKIE)?.strip_prefix('='))
}

/// The `Set-Cookie` value that keeps `token` in the browser for the rack page: HttpOnly (no
/// script reads it), SameSite=Strict (no other site's request carries it).
pub fn session_cookie_header(token: &str) -> String {
    format!("{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_is_made_once_and_only_its_token_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKEN_FILE);
        let token = ApiToken::load_or_create(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let written = parse(text.as_bytes()).unwrap();
        assert_eq!(written.len(), 64);
        assert!(token.accepts(written));
        assert!(!token.accepts(&written[1..]));
        assert!(!token.accepts(""));
        let again = ApiToken::load_or_create(&path).unwrap();
        assert!(again.accepts(written), "the same token after a restart");
    }
}
