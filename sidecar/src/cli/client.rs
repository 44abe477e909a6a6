//! The operator commands' HTTP client of a running sidecar: where it is
//! (flags, else the sidecar's own configuration), its token, and what its
//! answers mean for the command's exit code.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use outrigger::config::Config;

/// How to reach the sidecar, for every command that talks to one.
#[derive(clap::Args, Clone, Debug)]
pub struct Target {
    /// The sidecar's HTTP API: `HOST:PORT`, `http://HOST:PORT`, or a Unix
    /// socket (`unix:PATH` or an absolute path). Default: the sidecar's
    /// configuration (file and `OUTRIGGER_*` environment), its
    /// `http.socket` if set, else its `http.addr`.
    #[arg(long, global = true, value_name = "ADDR")]
    pub addr: Option<String>,
    /// The API token. Default: the configuration's `auth.token` or
    /// `auth.token_file`.
    #[arg(long, global = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Print JSON (one document, or one line per streamed event) instead
    /// of text for people.
    #[arg(long, global = true)]
    pub json: bool,
    /// How long to wait for each answer.
    #[arg(long, global = true, value_name = "DURATION", default_value = "10s",
          value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Why a command failed, which decides its exit code.
#[derive(Debug)]
pub enum Failure {
    /// 1: the answer is no: not found, or a condition does not hold.
    No(String),
    /// 2: a bad command line, or input the sidecar rejected.
    Usage(String),
    /// 3: not allowed: a missing or wrong token, or a plugin's denial.
    Denied(String),
    /// 4: the sidecar could not be reached or could not serve the request.
    Unavailable(String),
}

impl Failure {
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            Failure::No(_) => 1,
            Failure::Usage(_) => 2,
            Failure::Denied(_) => 3,
            Failure::Unavailable(_) => 4,
        })
    }

    pub fn message(&self) -> &str {
        match self {
            Failure::No(m) | Failure::Usage(m) | Failure::Denied(m) | Failure::Unavailable(m) => m,
        }
    }
}

/// A connected client: the base URL (a placeholder host over a Unix
/// socket) and the token to send.
pub struct Sidecar {
    client: Client,
    base: Url,
    token: Option<String>,
    /// Where it is, as the user would name it, for error messages.
    pub shown: String,
}

/// Where the sidecar listens.
enum Addr {
    Tcp(String),
    Unix(PathBuf),
}

fn parse_addr(text: &str) -> Addr {
    if let Some(path) = text.strip_prefix("unix:") {
        return Addr::Unix(PathBuf::from(path));
    }
    if text.starts_with('/') {
        return Addr::Unix(PathBuf::from(text));
    }
    let host = text
        .strip_prefix("http://")
        .unwrap_or(text)
        .trim_end_matches('/');
    Addr::Tcp(host.to_string())
}

/// A listener's address as a client reaches it: a wildcard bind address
/// is reached on loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

impl Sidecar {
    /// Resolves the target: flags first, then the configuration the
    /// sidecar itself would load from `config_file` and the environment.
    pub fn connect(target: &Target, config_file: Option<&Path>) -> Result<Sidecar, Failure> {
        let config = if target.addr.is_some() && target.token.is_some() {
            None
        } else {
            Some(Config::load(config_file).map_err(|e| {
                Failure::Usage(format!(
                    "cannot read the sidecar's configuration for its address and token \
                     ({e}); pass --addr and --token"
                ))
            })?)
        };
        let addr = match (&target.addr, &config) {
            (Some(addr), _) => parse_addr(addr),
            (None, Some(config)) => match &config.http.socket {
                Some(path) => Addr::Unix(path.clone()),
                None if config.http.addr.port() == 0 => {
                    return Err(Failure::Usage(
                        "the sidecar's http.addr has port 0 (chosen at start-up and logged \
                         then): pass --addr"
                            .into(),
                    ));
                }
                None => Addr::Tcp(reachable(config.http.addr).to_string()),
            },
            (None, None) => unreachable!("the configuration is read without --addr"),
        };
        let token = match (&target.token, &config) {
            (Some(token), _) => Some(token.clone()),
            (None, Some(config)) => match (&config.auth.token, &config.auth.token_file) {
                (Some(token), _) => Some(token.trim().to_string()),
                (None, Some(path)) => Some(
                    std::fs::read_to_string(path)
                        .map_err(|e| {
                            Failure::Usage(format!(
                                "cannot read auth.token_file {}: {e}",
                                path.display()
                            ))
                        })?
                        .trim()
                        .to_string(),
                ),
                (None, None) => None,
            },
            (None, None) => None,
        };
        let builder = Client::builder()
            .no_proxy()
            .timeout(target.timeout)
            .connect_timeout(target.timeout);
        let (builder, base, shown) = match addr {
            Addr::Tcp(host) => {
                let base = Url::parse(&format!("http://{host}/")).map_err(|_| {
                    Failure::Usage(format!("--addr {host:?} is not HOST:PORT or a socket path"))
                })?;
                (builder, base, host)
            }
            Addr::Unix(path) => (
                builder.unix_socket(path.clone()),
                Url::parse("http://outrigger/").expect("a valid URL"),
                path.display().to_string(),
            ),
        };
        let client = builder
            .build()
            .map_err(|e| Failure::Unavailable(format!("cannot make an HTTP client: {e}")))?;
        Ok(Sidecar {
            client,
            base,
            token,
            shown,
        })
    }

    /// A request to the path made of `segments`, each percent-encoded
    /// (a cache key may hold `/`, `?` or `%`).
    pub fn request(&self, method: Method, segments: &[&str]) -> RequestBuilder {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("an http URL has a path")
            .pop_if_empty()
            .extend(segments);
        let request = self.client.request(method, url);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends `request` and hands back a successful answer, or the failure
    /// its status (or the lack of an answer) means.
    pub fn send(&self, request: RequestBuilder) -> Result<Response, Failure> {
        let response = request.send().map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().unwrap_or_default();
        let message = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| {
                let text = body.trim();
                if text.is_empty() {
                    status.to_string()
                } else {
                    text.chars().take(300).collect()
                }
            });
        Err(match status {
            StatusCode::NOT_FOUND | StatusCode::CONFLICT | StatusCode::PRECONDITION_FAILED => {
                Failure::No(message)
            }
            StatusCode::UNAUTHORIZED => Failure::Denied(format!(
                "{message} (give the sidecar's token with --token, or run where its \
                 configuration is)"
            )),
            StatusCode::FORBIDDEN => Failure::Denied(message),
            StatusCode::TOO_MANY_REQUESTS => Failure::Unavailable(message),
            s if s.is_client_error() => Failure::Usage(message),
            _ => Failure::Unavailable(format!("the sidecar answered {status}: {message}")),
        })
    }

    /// Sends `request` and parses its JSON answer.
    pub fn json(&self, request: RequestBuilder) -> Result<Value, Failure> {
        let response = self.send(request)?;
        response.json().map_err(|e| self.unreachable(&e))
    }

    /// The failure for a request that got no (whole) answer.
    pub fn unreachable(&self, err: &reqwest::Error) -> Failure {
        let mut cause: &dyn std::error::Error = err;
        while let Some(source) = cause.source() {
            cause = source;
        }
        let what = if err.is_timeout() {
            "no answer in time".to_string()
        } else {
            cause.to_string()
        };
        Failure::Unavailable(format!(
            "cannot reach the sidecar at {}: {what}",
            self.shown
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_name_a_host_or_a_socket() {
        assert!(matches!(parse_addr("127.0.0.1:7480"), Addr::Tcp(h) if h == "127.0.0.1:7480"));
        assert!(matches!(parse_addr("http://[::1]:7480/"), Addr::Tcp(h) if h == "[::1]:7480"));
        assert!(
            matches!(parse_addr("unix:run/o.sock"), Addr::Unix(p) if p == Path::new("run/o.sock"))
        );
        assert!(
            matches!(parse_addr("/run/o.sock"), Addr::Unix(p) if p == Path::new("/run/o.sock"))
        );
        assert_eq!(
            reachable("0.0.0.0:7480".parse().unwrap()),
            "127.0.0.1:7480".parse().unwrap()
        );
        assert_eq!(
            reachable("[::]:7480".parse().unwrap()),
            "[::1]:7480".parse().unwrap()
        );
        assert_eq!(
            reachable("10.0.0.5:7480".parse().unwrap()),
            "10.0.0.5:7480".parse().unwrap()
        );
    }
}
