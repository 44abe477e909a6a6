//! Compiled plugins kept on disk (`plugin_cache`), so that a sidecar
//! starting, or reloading, a plugin it compiled before skips the compiler:
//! a component that carries a language runtime (JavaScript, Python: tens
//! of MB) takes seconds to compile and milliseconds to load compiled.
//!
//! An entry is named by the SHA-256 of the component and wasmtime's
//! compatibility hash (its version and the engine's settings), so a
//! changed file or another sidecar build never loads a stale entry.
//! Entries are written whole (a temporary file, renamed), and one that
//! fails to load is compiled again and replaced. The directory's files
//! are native code the sidecar runs: it must be writable by the sidecar
//! alone.

#![allow(unsafe_code)] // deserializing compiled code the sidecar wrote itself

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where compiled plugins are kept, if anywhere; set once at start-up.
static DIR: OnceLock<PathBuf> = OnceLock::new();

/// Keeps compiled plugins in `dir` from now on (the first call wins).
pub fn set_dir(dir: PathBuf) {
    let _ = DIR.set(dir);
}

/// How a component was made ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Made {
    /// Compiled now, taking this long (and kept, if there is a cache).
    Compiled(Duration),
    /// Loaded compiled from the cache, taking this long.
    Cached(Duration),
}

/// `bytes` compiled for `engine`: from the cache when it holds them,
/// else compiled (and kept there, best effort: a cache that cannot be
/// written is logged, never an error).
pub(crate) fn component(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<(Component, Made)> {
    let started = Instant::now();
    let Some(dir) = DIR.get() else {
        let component = Component::new(engine, bytes)?;
        return Ok((component, Made::Compiled(started.elapsed())));
    };
    let entry = dir.join(entry_name(engine, bytes));
    if entry.exists() {
        // SAFETY: the entry is a file this sidecar wrote with
        // `precompile_component`, named by the hash of its source and of
        // the engine; wasmtime checks its header and version.
        match unsafe { Component::deserialize_file(engine, &entry) } {
            Ok(component) => return Ok((component, Made::Cached(started.elapsed()))),
            Err(err) => tracing::warn!(
                entry = %entry.display(),
                error = %err,
                "a compiled plugin in the cache would not load; compiling it again"
            ),
        }
    }
    let compiled = engine.precompile_component(bytes)?;
    let made = Made::Compiled(started.elapsed());
    match keep(dir, &entry, &compiled) {
        // Loaded from the file it is kept in, as on a cache hit: its code
        // and its memory image are then mapped from that file (only the
        // pages used are resident, and shared with the page cache), not
        // copied into the sidecar's own memory.
        // SAFETY: as above; the file was just written from `compiled`.
        Ok(()) => match unsafe { Component::deserialize_file(engine, &entry) } {
            Ok(component) => return Ok((component, made)),
            Err(err) => tracing::warn!(
                entry = %entry.display(),
                error = %err,
                "a compiled plugin just kept in the cache would not load from there"
            ),
        },
        Err(err) => tracing::warn!(
            dir = %dir.display(),
            error = %err,
            "could not keep a compiled plugin in the cache; it is compiled again next start"
        ),
    }
    // SAFETY: just compiled by this engine.
    let component = unsafe { Component::deserialize(engine, &compiled)? };
    Ok((component, made))
}

/// `<sha256 of the component>-<engine hash>.cwasm`.
fn entry_name(engine: &Engine, bytes: &[u8]) -> String {
    let mut engine_hash = DefaultHasher::new();
    engine
        .precompile_compatibility_hash()
        .hash(&mut engine_hash);
    let digest = Sha256::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}-{:016x}.cwasm", engine_hash.finish())
}

/// Writes `entry` whole: a temporary file in `dir`, renamed over it.
fn keep(dir: &Path, entry: &Path, compiled: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        entry.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&tmp, compiled)?;
    std::fs::rename(&tmp, entry).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
