//! API authentication: a bearer token, from configuration or from a file
//! that is re-read when it changes (rotation without a restart), compared
//! in constant time.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// API authentication: a bearer token every API call must carry (all but
/// `/healthz` and `/readyz`). Neither key set: no authentication.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub token: Option<String>,
    /// A file holding the token (as Kubernetes mounts a Secret); re-read
    /// when it changes, so the token rotates without a restart.
    pub token_file: Option<PathBuf>,
}

/// How often a token file is checked for changes.
const RELOAD_INTERVAL: Duration = Duration::from_millis(500);

/// The token requests must present, if any.
pub struct Auth {
    /// `None`: authentication is off. A std lock: read per request, written
    /// only on rotation.
    token: RwLock<Option<Arc<[u8]>>>,
}

fn read_token(path: &PathBuf) -> std::io::Result<Arc<[u8]>> {
    let text = std::fs::read_to_string(path)?;
    let token = text.trim();
    if token.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the token file is empty",
        ));
    }
    Ok(Arc::from(token.as_bytes()))
}

/// Equal, in time that depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

impl Auth {
    /// Reads the token (failing start-up if its file is unreadable) and,
    /// for a file, starts watching it.
    pub fn new(config: &AuthConfig) -> anyhow::Result<Arc<Auth>> {
        let token = match (&config.token, &config.token_file) {
            (Some(token), _) => Some(Arc::from(token.trim().as_bytes())),
            (None, Some(path)) => Some(read_token(path).map_err(|e| {
                anyhow::anyhow!("auth.token_file: cannot read {}: {e}", path.display())
            })?),
            (None, None) => None,
        };
        let auth = Arc::new(Auth {
            token: RwLock::new(token),
        });
        if let Some(path) = config.token_file.clone() {
            tokio::spawn(watch(Arc::downgrade(&auth), path));
        }
        Ok(auth)
    }

    /// Whether authentication is on.
    pub fn enabled(&self) -> bool {
        self.token
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Whether an `Authorization` header value lets the request in.
    pub fn allows(&self, authorization: Option<&[u8]>) -> bool {
        let current = self.token.read().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(expected) = current else {
            return true;
        };
        let Some(presented) = authorization.and_then(|h| h.strip_prefix(b"Bearer ")) else {
            return false;
        };
        constant_time_eq(presented, &expected)
    }
}

/// Re-reads the token file when its modification time changes; keeps the
/// old token if the new file cannot be read.
async fn watch(auth: std::sync::Weak<Auth>, path: PathBuf) {
    let modified = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen: Option<SystemTime> = modified(&path);
    let mut tick = tokio::time::interval(RELOAD_INTERVAL);
    loop {
        tick.tick().await;
        let Some(auth) = auth.upgrade() else { return };
        let now = modified(&path);
        if now == seen {
            continue;
        }
        seen = now;
        match read_token(&path) {
            Ok(token) => {
                *auth.token.write().unwrap_or_else(|e| e.into_inner()) = Some(token);
                tracing::info!(path = %path.display(), "API token rotated");
            }
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "cannot read the new API token; keeping the old one");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_tokens_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[tokio::test]
    async fn bearer_tokens_only() {
        let auth = Auth::new(&AuthConfig {
            token: Some("s3cret".into()),
            token_file: None,
        })
        .unwrap();
        assert!(auth.allows(Some(b"Bearer s3cret")));
        assert!(!auth.allows(Some(b"Bearer s3cre")));
        assert!(!auth.allows(Some(b"s3cret")));
        assert!(!auth.allows(None));
        let off = Auth::new(&AuthConfig::default()).unwrap();
        assert!(!off.enabled() && off.allows(None));
    }
}
