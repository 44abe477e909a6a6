//! A TCP relay on a free loopback port: network faults in user space (this
//! kernel has no `netem`). A test puts it between a client and a server
//! and then holds the bytes in flight (a link that stalls without
//! breaking: a replica falling behind its master) or points it elsewhere
//! (a service address moving to a promoted replica).

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Where the relay sends connections, and whether bytes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Route {
    /// The port new connections are relayed to.
    target: u16,
    /// Bumped on every retarget: connections of an older generation end.
    generation: u64,
    /// Bytes read are kept, not passed on.
    held: bool,
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
            held: false,
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

    /// Stops passing bytes on, both ways, keeping the connections open.
    pub fn hold(&self) {
        self.route.send_modify(|r| r.held = true);
    }

    /// Passes bytes on again, those held first.
    pub fn release(&self) {
        self.route.send_modify(|r| r.held = false);
    }

    /// Ends every connection; new ones go to `target` (bytes flowing).
    pub fn retarget(&self, target: u16) {
        self.route.send_modify(|r| {
            r.target = target;
            r.generation += 1;
            r.held = false;
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
    let (client_rd, client_wr) = client.into_split();
    let (server_rd, server_wr) = server.into_split();
    let generation = route.generation;
    tokio::select! {
        () = pipe(client_rd, server_wr, routes.clone(), generation) => {}
        () = pipe(server_rd, client_wr, routes.clone(), generation) => {}
        () = retired(routes, generation) => {}
    }
}

/// Returns once the relay is retargeted past `generation` (or dropped).
async fn retired(mut routes: watch::Receiver<Route>, generation: u64) {
    let _ = routes.wait_for(|r| r.generation != generation).await;
}

/// Copies one direction, holding bytes while the route says so.
async fn pipe(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    mut routes: watch::Receiver<Route>,
    generation: u64,
) {
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let current = routes
            .wait_for(|r| !r.held || r.generation != generation)
            .await
            .map(|r| r.generation)
            .ok();
        if current != Some(generation) {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
