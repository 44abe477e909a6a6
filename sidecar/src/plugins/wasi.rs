//! What a plugin sees of WASI Preview 2: the interfaces a language runtime
//! (Python's, JavaScript's with its WASI features on, a Rust plugin's
//! `std`) imports, with nothing granted.
//!
//! - no preopened directories, so no file can be opened;
//! - no sockets: TCP, UDP and name lookups are refused;
//! - an empty environment, no arguments, stdin at its end;
//! - stdout and stderr go to the sidecar's log at debug level, a line at a
//!   time, counted against the call's log lines like `host.log`;
//! - clocks and random numbers as WASI provides them.
//!
//! wasmtime-wasi's synchronous bindings bridge every blocking operation
//! (a blocking write, a poll, dropping a stream) to tokio with
//! `Handle::block_on`, which panics on a runtime worker, where plugin calls
//! run. So `wasi:io` is bound here instead (over wasmtime-wasi's streams
//! and pollables): an operation that is ready at once (writing to the log,
//! a poll of a clock that has passed) completes on the worker, and only a
//! real wait gives the worker up first, and never outlasts the call's
//! wall-clock cap. UDP sockets, the other such path, are refused outright.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::runtime::{in_tokio, poll_noop, with_ambient_tokio_runtime};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Longest line kept of a plugin's stdout or stderr; the rest of a longer
/// line is dropped.
const MAX_LINE: usize = 4096;

/// A plugin instance's WASI state, made when it first calls WASI.
pub(crate) struct Wasi {
    ctx: WasiCtx,
    table: ResourceTable,
}

impl Wasi {
    /// Nothing granted; stdout and stderr to the log as `plugin`'s, each
    /// line taking one of `lines_left` (shared with `host.log`).
    pub(crate) fn new(plugin: Arc<str>, lines_left: Arc<AtomicU32>) -> Wasi {
        let stream = |name| LogLines {
            plugin: plugin.clone(),
            stream: name,
            lines_left: lines_left.clone(),
        };
        let ctx = WasiCtx::builder()
            .stdout(stream("stdout"))
            .stderr(stream("stderr"))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Wasi {
            ctx,
            table: ResourceTable::new(),
        }
    }

    pub(crate) fn view(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }

    /// Its streams and pollables, for a call that must end by `until`.
    pub(crate) fn io(&mut self, until: Instant) -> Io<'_> {
        Io {
            table: &mut self.table,
            until,
        }
    }
}

/// WASI for a plugin's linker: wasmtime-wasi's, with `wasi:io` and UDP
/// socket creation replaced (see the module's comment).
pub(crate) fn add_to_linker<T>(linker: &mut Linker<T>) -> wasmtime::Result<()>
where
    T: WasiView + HasIo + 'static,
{
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    linker.allow_shadowing(true);
    bindings::wasi::io::poll::add_to_linker::<T, IoData>(linker, T::io)?;
    bindings::wasi::io::streams::add_to_linker::<T, IoData>(linker, T::io)?;
    use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, IpAddressFamily};
    use wasmtime_wasi::p2::bindings::sync::sockets::udp::UdpSocket;
    linker
        .instance("wasi:sockets/udp-create-socket@0.2.12")?
        .func_wrap(
            "create-udp-socket",
            |_,
             (_,): (IpAddressFamily,)|
             -> wasmtime::Result<(Result<Resource<UdpSocket>, ErrorCode>,)> {
                Ok((Err(ErrorCode::AccessDenied),))
            },
        )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// A plugin's store data, giving its streams and pollables.
pub(crate) trait HasIo {
    fn io(&mut self) -> Io<'_>;
}

struct IoData;

impl HasData for IoData {
    type Data<'a> = Io<'a>;
}

/// `wasi:io` as a plugin sees it: wasmtime-wasi's streams and pollables,
/// waited on without blocking a runtime worker, and never past `until`.
pub(crate) struct Io<'a> {
    table: &'a mut ResourceTable,
    until: Instant,
}

/// Bindings of `wasi:io` (its WIT is wasmtime-wasi's, copied to
/// `sidecar/wit/wasi-io`) over wasmtime-wasi's own resource types, all
/// synchronous.
mod bindings {
    wasmtime::component::bindgen!({
        path: "wit/wasi-io",
        world: "wasi:io/imports",
        imports: { default: trappable },
        trappable_error_type: {
            "wasi:io/streams.stream-error" => wasmtime_wasi_io::streams::StreamError,
        },
        with: {
            "wasi:io/error": wasmtime_wasi_io::bindings::wasi::io::error,
            "wasi:io/poll.pollable": wasmtime_wasi_io::poll::DynPollable,
            "wasi:io/streams.input-stream": wasmtime_wasi_io::streams::DynInputStream,
            "wasi:io/streams.output-stream": wasmtime_wasi_io::streams::DynOutputStream,
        },
    });
}

use bindings::wasi::io::{poll, streams};
use wasmtime_wasi_io::bindings::wasi::io::{poll as async_poll, streams as async_streams};
use wasmtime_wasi_io::poll::DynPollable;
use wasmtime_wasi_io::streams::{DynInputStream, DynOutputStream, StreamError};

impl Io<'_> {
    /// Completes `op`: here if it is ready at once, else after giving the
    /// runtime worker up; a trap if it is not done by `until`.
    fn wait<F: Future>(until: Instant, op: F) -> wasmtime::Result<F::Output> {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let mut op = std::pin::pin!(op);
        if let Some(done) = with_ambient_tokio_runtime(|| poll_noop(op.as_mut())) {
            return Ok(done);
        }
        let left = until.saturating_duration_since(Instant::now());
        let done = match Handle::try_current().map(|h| h.runtime_flavor()) {
            // `block_in_place` hands the worker's other tasks to another
            // thread for the wait.
            Ok(RuntimeFlavor::MultiThread) => {
                tokio::task::block_in_place(|| in_tokio(tokio::time::timeout(left, op)).ok())
            }
            // A single-threaded runtime (a CLI command) cannot run its
            // timers while this thread waits: only what is ready can be
            // done.
            Ok(_) => loop {
                if let Some(done) = poll_noop(op.as_mut()) {
                    break Some(done);
                }
                if Instant::now() >= until {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(1));
            },
            Err(_) => in_tokio(tokio::time::timeout(left, op)).ok(),
        };
        done.ok_or_else(|| wasmtime::format_err!("waited on WASI past the call's wall-clock cap"))
    }
}

impl poll::Host for Io<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        Self::wait(self.until, async_poll::Host::poll(self.table, pollables))?
    }
}

impl poll::HostPollable for Io<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        Self::wait(
            self.until,
            async_poll::HostPollable::ready(self.table, pollable),
        )?
    }

    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        Self::wait(
            self.until,
            async_poll::HostPollable::block(self.table, pollable),
        )?
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        async_poll::HostPollable::drop(self.table, pollable)
    }
}

impl streams::Host for Io<'_> {
    fn convert_stream_error(&mut self, err: StreamError) -> wasmtime::Result<streams::StreamError> {
        Ok(
            match async_streams::Host::convert_stream_error(self.table, err)? {
                async_streams::StreamError::LastOperationFailed(e) => {
                    streams::StreamError::LastOperationFailed(e)
                }
                async_streams::StreamError::Closed => streams::StreamError::Closed,
            },
        )
    }
}

/// A blocking stream operation: its result, or the trap of a wait past
/// the cap.
fn flat<T>(waited: wasmtime::Result<Result<T, StreamError>>) -> Result<T, StreamError> {
    waited.map_err(StreamError::Trap)?
}

impl streams::HostOutputStream for Io<'_> {
    fn check_write(&mut self, stream: Resource<DynOutputStream>) -> Result<u64, StreamError> {
        async_streams::HostOutputStream::check_write(self.table, stream)
    }

    fn write(
        &mut self,
        stream: Resource<DynOutputStream>,
        bytes: Vec<u8>,
    ) -> Result<(), StreamError> {
        async_streams::HostOutputStream::write(self.table, stream, bytes)
    }

    fn blocking_write_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        bytes: Vec<u8>,
    ) -> Result<(), StreamError> {
        flat(Self::wait(
            self.until,
            async_streams::HostOutputStream::blocking_write_and_flush(self.table, stream, bytes),
        ))
    }

    fn flush(&mut self, stream: Resource<DynOutputStream>) -> Result<(), StreamError> {
        async_streams::HostOutputStream::flush(self.table, stream)
    }

    fn blocking_flush(&mut self, stream: Resource<DynOutputStream>) -> Result<(), StreamError> {
        flat(Self::wait(
            self.until,
            async_streams::HostOutputStream::blocking_flush(self.table, stream),
        ))
    }

    fn subscribe(
        &mut self,
        stream: Resource<DynOutputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        async_streams::HostOutputStream::subscribe(self.table, stream)
    }

    fn write_zeroes(
        &mut self,
        stream: Resource<DynOutputStream>,
        len: u64,
    ) -> Result<(), StreamError> {
        async_streams::HostOutputStream::write_zeroes(self.table, stream, len)
    }

    fn blocking_write_zeroes_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        len: u64,
    ) -> Result<(), StreamError> {
        flat(Self::wait(
            self.until,
            async_streams::HostOutputStream::blocking_write_zeroes_and_flush(
                self.table, stream, len,
            ),
        ))
    }

    fn splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> Result<u64, StreamError> {
        async_streams::HostOutputStream::splice(self.table, dst, src, len)
    }

    fn blocking_splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> Result<u64, StreamError> {
        flat(Self::wait(
            self.until,
            async_streams::HostOutputStream::blocking_splice(self.table, dst, src, len),
        ))
    }

    fn drop(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<()> {
        Self::wait(
            self.until,
            async_streams::HostOutputStream::drop(self.table, stream),
        )?
    }
}

impl streams::HostInputStream for Io<'_> {
    fn read(&mut self, stream: Resource<DynInputStream>, len: u64) -> Result<Vec<u8>, StreamError> {
        async_streams::HostInputStream::read(self.table, stream, len)
    }

    fn blocking_read(
        &mut self,
        stream: Resource<DynInputStream>,
        len: u64,
    ) -> Result<Vec<u8>, StreamError> {
        flat(Self::wait(
            self.until,
            async_streams::HostInputStream::blocking_read(self.table, stream, len),
        ))
    }

    fn skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> Result<u64, StreamError> {
        async_streams::HostInputStream::skip(self.table, stream, len)
    }

    fn blocking_skip(
        &mut self,
        stream: Resource<DynInputStream>,
        len: u64,
    ) -> Result<u64, StreamError> {
        flat(Self::wait(
            self.until,
            async_streams::HostInputStream::blocking_skip(self.table, stream, len),
        ))
    }

    fn subscribe(
        &mut self,
        stream: Resource<DynInputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        async_streams::HostInputStream::subscribe(self.table, stream)
    }

    fn drop(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<()> {
        Self::wait(
            self.until,
            async_streams::HostInputStream::drop(self.table, stream),
        )?
    }
}

/// A plugin's stdout or stderr: its lines, in the log at debug level.
#[derive(Clone)]
struct LogLines {
    plugin: Arc<str>,
    stream: &'static str,
    lines_left: Arc<AtomicU32>,
}

/// One stream handed to the guest: the line so far.
struct LineWriter {
    to: LogLines,
    line: Vec<u8>,
    /// The line went over `MAX_LINE`: the rest of it is dropped.
    cut: bool,
}

impl LineWriter {
    fn take(&mut self, mut bytes: &[u8]) {
        while let Some(end) = bytes.iter().position(|b| *b == b'\n') {
            self.keep(&bytes[..end]);
            self.emit();
            bytes = &bytes[end + 1..];
        }
        self.keep(bytes);
    }

    fn keep(&mut self, bytes: &[u8]) {
        let room = MAX_LINE - self.line.len();
        if bytes.len() > room {
            self.cut = true;
        }
        self.line.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn emit(&mut self) {
        let LogLines {
            plugin,
            stream,
            lines_left,
        } = &self.to;
        let took =
            lines_left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        if took.is_ok() {
            let line = String::from_utf8_lossy(&self.line);
            let more = if self.cut { "…" } else { "" };
            tracing::debug!(target: "outrigger::plugin", plugin = &**plugin, stream, "{line}{more}");
        }
        self.line.clear();
        self.cut = false;
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.emit();
        }
    }
}

impl IsTerminal for LogLines {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogLines {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.writer())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.writer())
    }
}

impl LogLines {
    fn writer(&self) -> LineWriter {
        LineWriter {
            to: self.clone(),
            line: Vec::new(),
            cut: false,
        }
    }
}

/// Always ready: the log never pushes back.
#[wasmtime_wasi::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}

impl OutputStream for LineWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.take(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.take(bytes);
        Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
