//! A plugin that tries what WASI might grant it and denies every request
//! with what it found: `env=0 args=0 file=denied dir=denied tcp=denied
//! udp=denied clock=ok` when it has nothing but a clock. Before that it
//! prints a line to stdout and one to stderr.
//!
//! `{"port": N}`: the localhost TCP port it tries to connect to.
//! `{"sleep": true}`: sleeps 30 s instead (a WASI wait).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use outrigger_plugin_sdk::{Authorize, Config, Decision, Plugin, Request};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Probe {
    #[serde(default)]
    port: u16,
    #[serde(default)]
    sleep: bool,
}

impl Plugin for Probe {
    fn new(config: Config) -> Result<Self, String> {
        config.parse()
    }
}

impl Authorize for Probe {
    fn authorize(&self, _: &Request) -> Decision {
        if self.sleep {
            std::thread::sleep(Duration::from_secs(30));
            return Decision::deny("slept");
        }
        println!("wasi-probe on stdout");
        eprintln!("wasi-probe on stderr");
        let verdict = |granted: bool| if granted { "granted" } else { "denied" };
        let env = std::env::vars_os().count();
        let args = std::env::args_os().count();
        let file = std::fs::read("/etc/hostname").is_ok() || std::fs::read("Cargo.toml").is_ok();
        let dir = std::fs::read_dir("/").is_ok() || std::fs::read_dir(".").is_ok();
        let tcp = std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").is_ok();
        // After 2020-01-01.
        let clock = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .is_ok_and(|d| d.as_secs() > 1_577_836_800);
        Decision::deny(format!(
            "env={env} args={args} file={} dir={} tcp={} udp={} clock={}",
            verdict(file),
            verdict(dir),
            verdict(tcp),
            verdict(udp),
            if clock { "ok" } else { "wrong" }
        ))
    }
}

outrigger_plugin_sdk::export!(Probe: authorize);
