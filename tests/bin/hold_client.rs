//! `hold-client <grpc-url> <lock-name> <ttl-ms>`: holds a lock through the
//! sidecar's `Lock.Hold` stream, prints `acquired fence=<n>`, and keeps the
//! stream open until the process is killed.

use outrigger::api::pb;
use outrigger::api::pb::lock_client::LockClient;
use tokio_stream::StreamExt;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, name, ttl_ms] = args.as_slice() else {
        anyhow::bail!("usage: hold-client <grpc-url> <lock-name> <ttl-ms>");
    };
    let mut client = LockClient::connect(url.clone()).await?;
    let first = pb::HoldRequest {
        action: Some(pb::hold_request::Action::Acquire(pb::AcquireRequest {
            name: name.clone(),
            ttl_ms: ttl_ms.parse()?,
            wait_ms: 0,
        })),
    };
    // Keep the sending side open forever: the stream only ends when we die.
    let outbound = tokio_stream::once(first).chain(tokio_stream::pending());
    let mut events = client.hold(outbound).await?.into_inner();
    let Some(event) = events.message().await? else {
        anyhow::bail!("stream ended before any event");
    };
    if event.event != pb::hold_response::Event::Acquired as i32 {
        anyhow::bail!("not acquired: {event:?}");
    }
    println!("acquired fence={}", event.fence);
    while let Some(event) = events.message().await? {
        println!("event {event:?}");
    }
    Ok(())
}
