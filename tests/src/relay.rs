//! A TCP relay on a free loopback port: network faults in user space (this
//! kernel has no `netem`). A test puts it between a client and a server,
//! then adds latency and jitter, caps the bandwidth, holds the bytes in
//! flight in one direction or both (a link that stalls without breaking:
//! a black hole, a replica falling behind its master), drops every
//! connection, or points it elsewhere (a service address moving to a
//! promoted replica).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One way through the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// Client to server (requests).
    Up,
    /// Server to client (answers).
    Down,
}

/// Where the relay sends connections, and how bytes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Route {
    /// The port new connections are relayed to.
    target: u16,
    /// Bumped to end every connection: those of an older generation end.
    generation: u64,
    /// Bytes read are kept, not passed on: [up, down].
    held: [bool; 2],
    /// Added before each chunk is passed on, plus up to `jitter` more.
    latency: Duration,
    jitter: Duration,
    /// Bytes per second each way, at most; 0: no cap.
    bandwidth: u64,
}

/// A relay; it and its connections stop when it drops.
pub struct Relay {
    pub port: u16,
    route: Arc<watch::Sender<Route>>,
    accept: JoinHandle<()>,
}

impl Relay {
    /// Relays connections on a free port to `target` (on loopback).
    pub async fn start(target: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a relay");
        let port = listener.local_addr().expect("the relay's address").port();
        let route = Arc::new(watch::Sender::new(Route {
            target,
            generation: 0,
            held: [false; 2],
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            bandwidth: 0,
        }));
        let routes = route.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let routes = routes.subscribe();
                tokio::spawn(connection(client, routes));
            }
        });
        Relay {
            port,
            route,
            accept,
        }
    }

    /// Stops passing bytes on, both ways, keeping the connections open (a
    /// black hole: connections are accepted, nothing is answered).
    pub fn hold(&self) {
        self.route.send_modify(|r| r.held = [true; 2]);
    }

    /// Stops passing bytes on one way only.
    pub fn hold_way(&self, way: Way) {
        self.route.send_modify(|r| r.held[way as usize] = true);
    }

    /// Passes bytes on again, those held first.
    pub fn release(&self) {
        self.route.send_modify(|r| r.held = [false; 2]);
    }

    /// Delays every chunk by `latency` plus up to `jitter`.
    pub fn delay(&self, latency: Duration, jitter: Duration) {
        self.route.send_modify(|r| {
            r.latency = latency;
            r.jitter = jitter;
        });
    }

    /// Caps each way at `bytes_per_second` (0: no cap).
    pub fn cap(&self, bytes_per_second: u64) {
        self.route.send_modify(|r| r.bandwidth = bytes_per_second);
    }

    /// Ends every open connection (new ones are relayed as before).
    pub fn drop_connections(&self) {
        self.route.send_modify(|r| r.generation += 1);
    }

    /// Back to a plain relay: no delay, no cap, nothing held.
    pub fn heal(&self) {
        self.route.send_modify(|r| {
            r.held = [false; 2];
            r.latency = Duration::ZERO;
            r.jitter = Duration::ZERO;
            r.bandwidth = 0;
        });
    }

    /// Ends every connection; new ones go to `target` (bytes flowing).
    pub fn retarget(&self, target: u16) {
        self.route.send_modify(|r| {
            r.target = target;
            r.generation += 1;
            r.held = [false; 2];
        });
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        // Ends the connections, which watch for it.
        self.route.send_modify(|r| r.generation += 1);
    }
}

async fn connection(client: TcpStream, routes: watch::Receiver<Route>) {
    let route = *routes.borrow();
    let Ok(server) = TcpStream::connect(("127.0.0.1", route.target)).await else {
        return; // the client sees its connection close
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_rd, client_wr) = client.into_split();
    let (server_rd, server_wr) = server.into_split();
    let generation = route.generation;
    tokio::select! {
        () = pipe(client_rd, server_wr, Way::Up, routes.clone(), generation) => {}
        () = pipe(server_rd, client_wr, Way::Down, routes.clone(), generation) => {}
        () = retired(routes, generation) => {}
    }
}

/// Returns once the relay ends the connections of `generation`.
async fn retired(mut routes: watch::Receiver<Route>, generation: u64) {
    let _ = routes.wait_for(|r| r.generation != generation).await;
}

/// Copies one way, as the route says: held, delayed, capped.
async fn pipe(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    way: Way,
    mut routes: watch::Receiver<Route>,
    generation: u64,
) {
    let mut buf = vec![0; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let route = routes
            .wait_for(|r| !r.held[way as usize] || r.generation != generation)
            .await
            .map(|r| *r)
            .ok();
        let Some(route) = route.filter(|r| r.generation == generation) else {
            return;
        };
        let mut wait = route.latency;
        if !route.jitter.is_zero() {
            wait += route.jitter.mul_f64(rand::random::<f64>());
        }
        if route.bandwidth > 0 {
            wait += Duration::from_secs_f64(n as f64 / route.bandwidth as f64);
        }
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// An echo server; its port.
    async fn echo() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0; 64 * 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        port
    }

    /// Sends `bytes` and reads them back within `limit`; how long it took,
    /// or None if they did not all come back in time.
    async fn round_trip(s: &mut TcpStream, bytes: &[u8], limit: Duration) -> Option<Duration> {
        let started = Instant::now();
        s.write_all(bytes).await.ok()?;
        let mut back = vec![0; bytes.len()];
        tokio::time::timeout(limit, s.read_exact(&mut back))
            .await
            .ok()?
            .ok()?;
        (back == bytes).then(|| started.elapsed())
    }

    #[tokio::test]
    async fn relays_delays_caps_holds_and_drops() {
        let relay = Relay::start(echo().await).await;
        let mut s = TcpStream::connect(("127.0.0.1", relay.port)).await.unwrap();
        let short = Duration::from_secs(2);
        assert!(round_trip(&mut s, b"plain", short).await.is_some());
        // Latency each way.
        relay.delay(Duration::from_millis(100), Duration::ZERO);
        let took = round_trip(&mut s, b"slow", short).await.unwrap();
        assert!(took >= Duration::from_millis(200), "{took:?}");
        relay.heal();
        // 64 KiB at 256 KiB/s each way: a quarter of a second at least.
        relay.cap(256 * 1024);
        let took = round_trip(&mut s, &[7; 64 * 1024], short).await.unwrap();
        assert!(took >= Duration::from_millis(250), "{took:?}");
        relay.heal();
        // Answers held: nothing comes back, until released.
        relay.hold_way(Way::Down);
        assert!(
            round_trip(&mut s, b"held", Duration::from_millis(200))
                .await
                .is_none()
        );
        relay.release();
        let mut back = [0; 4];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"held");
        // Requests held: the server never sees them.
        relay.hold();
        assert!(
            round_trip(&mut s, b"hole", Duration::from_millis(200))
                .await
                .is_none()
        );
        relay.heal();
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"hole");
        // Dropped: the connection ends; a new one works.
        relay.drop_connections();
        let mut gone = [0; 1];
        let read = tokio::time::timeout(short, s.read(&mut gone))
            .await
            .unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        let mut again = TcpStream::connect(("127.0.0.1", relay.port)).await.unwrap();
        assert!(round_trip(&mut again, b"again", short).await.is_some());
    }
}
