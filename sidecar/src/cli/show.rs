//! Text for people: tables, durations and times.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Prints `rows` under `header`, each column as wide as its widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, (cell, width)) in cells.zip(&widths).enumerate() {
            if i + 1 == widths.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
}

/// A duration in milliseconds, as briefly as is still exact enough:
/// `850ms`, `12.5s`, `3m 20s`, `2h 5m`.
pub fn millis(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m {}s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{}h {}m", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

/// A Unix time in milliseconds, as UTC to the second.
pub fn time(unix_ms: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(unix_ms);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// How long ago a Unix time in milliseconds was.
pub fn ago(unix_ms: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    format!("{} ago", millis(now.saturating_sub(unix_ms)))
}

/// A byte count: `512 B`, `1.5 KiB`, `3.2 MiB`.
pub fn bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

/// A value or payload the sidecar gave as `key` (text) or `key_base64`.
pub fn payload(object: &Value, key: &str) -> String {
    match (&object[key], &object[format!("{key}_base64")]) {
        (Value::String(text), _) => text.clone(),
        (_, Value::String(b64)) => format!("(binary, base64) {b64}"),
        _ => String::new(),
    }
}

/// A JSON value in one line: strings bare, null as `-`.
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_read_briefly() {
        assert_eq!(millis(850), "850ms");
        assert_eq!(millis(12_500), "12.5s");
        assert_eq!(millis(200_000), "3m 20s");
        assert_eq!(millis(7_500_000), "2h 5m");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(time(1_796_225_080_019), "2026-12-02T15:24:40Z");
    }
}
