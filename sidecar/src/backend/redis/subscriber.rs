//! One Redis pub/sub connection per sidecar, shared by everything that
//! listens: lock releases, presence watchers, pub/sub subscribers.
//!
//! Each channel or pattern is subscribed in Redis once, however many local
//! listeners it has, and fanned out through a bounded broadcast channel: a
//! listener that falls behind loses the oldest messages and is told how
//! many (never slowing the connection or the other listeners). The last
//! listener of a topic leaving unsubscribes it. When the connection drops, a
//! background task reconnects and subscribes every live topic again.
//!
//! A connection that stops answering without closing (a half-open TCP
//! connection, a frozen server) is found by a PING every
//! [`PING_INTERVAL`], answered within the deadline or the connection is
//! dropped and made again. Every loss and every re-establishment is
//! announced on [`Subscriber::connection`], so listeners that must not miss
//! a message (the near cache's invalidations) know when they may have.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::Topology;
use crate::backend::BackendError;

/// Pause before reconnecting a lost pub/sub connection.
const RECONNECT_DELAY: Duration = Duration::from_millis(250);

/// How often an idle pub/sub connection is checked with a PING.
pub(crate) const PING_INTERVAL: Duration = Duration::from_secs(1);

/// Most topics subscribed in one SUBSCRIBE (or PSUBSCRIBE): new topics
/// queued together go in one round trip, so 1,000 channels subscribed to
/// at once take a few round trips, not 1,000 in a row (which, on a busy
/// machine, outran the deadline of the last ones).
const SUBSCRIBE_BATCH: usize = 512;

/// The state of the pub/sub connection, as [`Subscriber::connection`]
/// reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Connection {
    /// Counts connections made: changes whenever messages may have been
    /// missed.
    pub epoch: u64,
    /// Connected, with every topic that had listeners subscribed.
    pub up: bool,
}

/// A channel, or a pattern of channels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Topic {
    Channel(String),
    Pattern(String),
}

/// A message as it arrived, with the channel it was published on.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub channel: String,
    pub payload: Bytes,
}

struct Entry {
    tx: broadcast::Sender<Delivery>,
    listeners: usize,
    /// Confirmed subscribed on the current connection.
    active: bool,
}

type Topics = Arc<Mutex<HashMap<Topic, Entry>>>;

enum Command {
    Subscribe(Topic, oneshot::Sender<Result<(), String>>),
    Unsubscribe(Topic),
}

/// The shared pub/sub connection.
pub(crate) struct Subscriber {
    commands: mpsc::UnboundedSender<Command>,
    /// Every topic with listeners. A std mutex: only map updates inside.
    topics: Topics,
    /// Messages a listener may fall behind by.
    buffer: usize,
    deadline: Duration,
    connection: tokio::sync::watch::Receiver<Connection>,
    task: tokio::task::AbortHandle,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A listener's hold on a topic; dropping it lets the topic go.
pub(crate) struct Subscription {
    pub rx: broadcast::Receiver<Delivery>,
    guard: Unlisten,
}

impl Subscription {
    /// Splits off what keeps the subscription alive, for callers that want
    /// to own the receiver separately.
    pub fn into_parts(self) -> (broadcast::Receiver<Delivery>, Listening) {
        (self.rx, Listening(self.guard))
    }
}

/// Keeps a topic listened to; dropping it lets the topic go.
pub(crate) struct Listening(#[allow(dead_code)] Unlisten);

struct Unlisten {
    subscriber: Weak<Subscriber>,
    topic: Topic,
}

impl Drop for Unlisten {
    fn drop(&mut self) {
        if let Some(subscriber) = self.subscriber.upgrade() {
            subscriber.unlisten(&self.topic);
        }
    }
}

fn lock(topics: &Topics) -> std::sync::MutexGuard<'_, HashMap<Topic, Entry>> {
    topics.lock().unwrap_or_else(|e| e.into_inner())
}

impl Subscriber {
    pub fn start(topology: Arc<Topology>, buffer: usize, deadline: Duration) -> Arc<Subscriber> {
        let (commands, rx) = mpsc::unbounded_channel();
        let topics: Topics = Arc::default();
        let (state, connection) = tokio::sync::watch::channel(Connection {
            epoch: 0,
            up: false,
        });
        let task = tokio::spawn(run(topology, topics.clone(), rx, state, deadline)).abort_handle();
        Arc::new(Subscriber {
            commands,
            topics,
            buffer,
            deadline,
            connection,
            task,
        })
    }

    /// Follows the connection: a new epoch means a new connection, and
    /// messages published while there was none were not received.
    pub fn connection(&self) -> tokio::sync::watch::Receiver<Connection> {
        self.connection.clone()
    }

    /// Listens to `topic`. With `confirm`, returns once Redis has confirmed
    /// the subscription, so everything published from then on arrives;
    /// without, returns at once and the subscription is made as soon as the
    /// connection is up (for listeners that must exist while Redis is down).
    pub async fn listen(
        self: &Arc<Self>,
        topic: Topic,
        confirm: bool,
    ) -> Result<Subscription, BackendError> {
        let (rx, active) = {
            let mut topics = lock(&self.topics);
            let entry = topics.entry(topic.clone()).or_insert_with(|| Entry {
                tx: broadcast::channel(self.buffer).0,
                listeners: 0,
                active: false,
            });
            entry.listeners += 1;
            (entry.tx.subscribe(), entry.active)
        };
        let subscription = Subscription {
            rx,
            guard: Unlisten {
                subscriber: Arc::downgrade(self),
                topic: topic.clone(),
            },
        };
        if active {
            return Ok(subscription);
        }
        let (ack, confirmed) = oneshot::channel();
        self.commands
            .send(Command::Subscribe(topic, ack))
            .map_err(|_| BackendError::Unavailable("subscriber stopped".into()))?;
        if !confirm {
            return Ok(subscription);
        }
        match tokio::time::timeout(self.deadline, confirmed).await {
            Ok(Ok(Ok(()))) => Ok(subscription),
            Ok(Ok(Err(err))) => Err(BackendError::Unavailable(format!("subscribe: {err}"))),
            Ok(Err(_)) => Err(BackendError::Unavailable("subscriber stopped".into())),
            Err(_) => Err(BackendError::Timeout(self.deadline)),
        }
    }

    fn unlisten(&self, topic: &Topic) {
        let mut topics = lock(&self.topics);
        let Some(entry) = topics.get_mut(topic) else {
            return;
        };
        entry.listeners -= 1;
        if entry.listeners == 0 {
            topics.remove(topic);
            let _ = self.commands.send(Command::Unsubscribe(topic.clone()));
        }
    }
}

/// Subscribes the topics of `batch` still listened to, channels in one
/// SUBSCRIBE and patterns in one PSUBSCRIBE, and answers each waiting
/// listener. Whether the connection is still healthy.
async fn subscribe_batch(
    sink: &mut redis::aio::PubSubSink,
    topics: &Topics,
    batch: Vec<(Topic, oneshot::Sender<Result<(), String>>)>,
) -> bool {
    // Unlistened meanwhile: nothing to subscribe.
    let wanted: Vec<&Topic> = {
        let topics = lock(topics);
        batch
            .iter()
            .map(|(topic, _)| topic)
            .filter(|topic| topics.contains_key(topic))
            .collect()
    };
    let result = subscribe_all(sink, &wanted)
        .await
        .map_err(|e| e.to_string());
    for (topic, ack) in batch {
        if result.is_ok() {
            set_active(topics, &topic, true);
        }
        let _ = ack.send(result.clone());
    }
    result.is_ok()
}

/// Subscribes `topics` (at most [`SUBSCRIBE_BATCH`]): the channels in one
/// SUBSCRIBE, the patterns in one PSUBSCRIBE.
async fn subscribe_all(
    sink: &mut redis::aio::PubSubSink,
    topics: &[&Topic],
) -> redis::RedisResult<()> {
    let (mut channels, mut patterns) = (Vec::new(), Vec::new());
    for topic in topics {
        match topic {
            Topic::Channel(c) => channels.push(c.as_str()),
            Topic::Pattern(p) => patterns.push(p.as_str()),
        }
    }
    if !channels.is_empty() {
        sink.subscribe(&channels).await?;
    }
    if !patterns.is_empty() {
        sink.psubscribe(&patterns).await?;
    }
    Ok(())
}

/// Unsubscribes `topic` unless it was listened to again meanwhile. Whether
/// the connection is still healthy.
async fn unsubscribe(sink: &mut redis::aio::PubSubSink, topics: &Topics, topic: &Topic) -> bool {
    if lock(topics).contains_key(topic) {
        return true;
    }
    let result = match topic {
        Topic::Channel(c) => sink.unsubscribe(c).await,
        Topic::Pattern(p) => sink.punsubscribe(p).await,
    };
    result.is_ok()
}

fn set_active(topics: &Topics, topic: &Topic, active: bool) {
    if let Some(entry) = lock(topics).get_mut(topic) {
        entry.active = active;
    }
}

/// Owns the connection: (re)connects, (re)subscribes, routes messages.
async fn run(
    topology: Arc<Topology>,
    topics: Topics,
    mut commands: mpsc::UnboundedReceiver<Command>,
    state: tokio::sync::watch::Sender<Connection>,
    deadline: Duration,
) {
    let mut attempt = 0;
    loop {
        let connect = async {
            let client = topology.node(attempt).await?;
            client.get_async_pubsub().await
        };
        let connected = match tokio::time::timeout(deadline, connect).await {
            Ok(result) => result,
            Err(_) => Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "timed out connecting",
            ))),
        };
        match connected {
            Ok(pubsub) => {
                let (mut sink, mut stream) = pubsub.split();
                let wanted: Vec<Topic> = lock(&topics).keys().cloned().collect();
                let mut healthy = true;
                for chunk in wanted.chunks(SUBSCRIBE_BATCH) {
                    let chunk: Vec<&Topic> = chunk.iter().collect();
                    if subscribe_all(&mut sink, &chunk).await.is_err() {
                        healthy = false;
                        break;
                    }
                    for topic in chunk {
                        set_active(&topics, topic, true);
                    }
                }
                if healthy {
                    state.send_modify(|c| {
                        c.epoch += 1;
                        c.up = true;
                    });
                }
                let mut ping = tokio::time::interval(PING_INTERVAL);
                ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ping.reset();
                while healthy {
                    tokio::select! {
                        _ = ping.tick() => {
                            let answered = tokio::time::timeout(
                                deadline,
                                sink.ping::<redis::Value>(),
                            )
                            .await;
                            if !matches!(answered, Ok(Ok(_))) {
                                tracing::warn!("the Redis pub/sub connection did not answer a PING");
                                healthy = false;
                            }
                        }
                        command = commands.recv() => match command {
                            None => return,
                            Some(Command::Subscribe(topic, ack)) => {
                                // With every other subscription already queued.
                                let mut batch = vec![(topic, ack)];
                                let mut then = None;
                                while batch.len() < SUBSCRIBE_BATCH {
                                    match commands.try_recv() {
                                        Ok(Command::Subscribe(topic, ack)) => batch.push((topic, ack)),
                                        Ok(other) => {
                                            then = Some(other);
                                            break;
                                        }
                                        Err(_) => break,
                                    }
                                }
                                healthy = subscribe_batch(&mut sink, &topics, batch).await;
                                if healthy && let Some(Command::Unsubscribe(topic)) = then {
                                    healthy = unsubscribe(&mut sink, &topics, &topic).await;
                                }
                            }
                            Some(Command::Unsubscribe(topic)) => {
                                healthy = unsubscribe(&mut sink, &topics, &topic).await;
                            }
                        },
                        message = stream.next() => match message {
                            None => healthy = false,
                            Some(msg) => {
                                let topic = if msg.from_pattern() {
                                    msg.get_pattern::<String>().ok().map(Topic::Pattern)
                                } else {
                                    Some(Topic::Channel(msg.get_channel_name().to_string()))
                                };
                                let Some(topic) = topic else { continue };
                                if let Some(entry) = lock(&topics).get(&topic) {
                                    let _ = entry.tx.send(Delivery {
                                        channel: msg.get_channel_name().to_string(),
                                        payload: Bytes::copy_from_slice(msg.get_payload_bytes()),
                                    });
                                }
                            }
                        },
                    }
                }
                tracing::warn!("lost the Redis pub/sub connection; reconnecting");
                for entry in lock(&topics).values_mut() {
                    entry.active = false;
                }
                state.send_modify(|c| c.up = false);
            }
            Err(err) => tracing::debug!(error = %err, "cannot open a Redis pub/sub connection"),
        }
        // Answer what queued up while disconnected, so callers do not wait
        // for their deadline on a connection that is not there.
        while let Ok(command) = commands.try_recv() {
            if let Command::Subscribe(_, ack) = command {
                let _ = ack.send(Err("Redis pub/sub connection lost".into()));
            }
        }
        // Next time, the next seed (on a cluster: this node may be gone).
        attempt = attempt.wrapping_add(1);
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}
