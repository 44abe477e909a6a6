//! The pub/sub primitive: validation, subscriber limits, and the gapless
//! resume of durable channels.
//!
//! Resume, the approach DESIGN.md fixes: subscribe to the live feed first
//! (it buffers), then read the stream after the client's offset page by
//! page and deliver it, then drain the live feed, skipping every durable
//! message whose offset is not greater than the last one delivered. The
//! live subscription started before the first read, so the seam has neither
//! a gap nor a duplicate.

pub mod config;
pub mod failover;
pub mod grpc;
pub mod http;
pub mod memory;
pub mod redis;
pub mod store;

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::Common;
use crate::backend::{Feed, FeedItem, glob};
use crate::error::{Error, Result};
use crate::kit::Primitive;
use crate::plugins::config::PrimitiveName;
use crate::plugins::{Caller, ValuePoint};

use crate::telemetry::{self, Metrics};
use crate::validate;
use crate::validate::Limits;
use config::PubSubConfig;
use store::{Offset, PubMessage, PubSubStore, Publish, Published, Range, Retention};

/// Durable messages read per replay step.
const REPLAY_PAGE: usize = 500;
/// Most headers on one message, and longest header name or value.
const MAX_HEADERS: usize = 64;
const MAX_HEADER_BYTES: usize = 1024;

/// Messages one history read returns at most.
pub const MAX_HISTORY_PAGE: usize = 1000;
/// ... and without `limit`.
const DEFAULT_HISTORY_PAGE: usize = 100;

/// What a subscriber receives.
#[derive(Debug, Clone)]
pub enum Delivery {
    Message(Arc<PubMessage>),
    /// A live subscriber fell behind and missed this many messages.
    Lagged(u64),
    /// A resumed subscription has delivered every durable message the
    /// channel held after its offset when the replay ended (the last one
    /// delivered, if any): what follows was published after that.
    Replayed(Option<Offset>),
    /// A resumed subscription's first delivery, and again whenever its
    /// replay finds a gap: whether what follows runs on from the offset.
    Resumed(Resumed),
}

/// Where a resumed subscription stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumed {
    /// What follows runs on from the subscriber's offset, nothing missed.
    /// False when messages after it were trimmed or expired, or the offset
    /// is of another epoch: the subscriber should reload its state.
    pub recovered: bool,
    /// The channel's epoch: resume with it next time.
    pub epoch: String,
    /// The first message the replay delivers (none when it has nothing).
    pub from: Option<Offset>,
}

/// Where a subscriber resumes: after an offset, of an epoch if it knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeFrom {
    pub offset: Offset,
    pub epoch: Option<String>,
}

impl From<Offset> for ResumeFrom {
    fn from(offset: Offset) -> Self {
        ResumeFrom {
            offset,
            epoch: None,
        }
    }
}

/// What a subscriber receives: deliveries, or the error that ended the
/// subscription.
pub type Subscription = Pin<Box<dyn Stream<Item = Result<Delivery>> + Send>>;

/// A history read: `last` newest messages, or a page of those between
/// `from` and `to` (included) continuing after `cursor`.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    pub last: Option<usize>,
    pub from: Option<Offset>,
    pub to: Option<Offset>,
    pub newest_first: bool,
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<Offset>,
}

/// A page of history, in the order asked for.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// The channel's epoch: none for a channel that does not exist.
    pub epoch: Option<String>,
    pub messages: Vec<PubMessage>,
    /// Where the next page starts (the last offset of this one), when this
    /// page is full.
    pub next_cursor: Option<Offset>,
}

/// Pub/sub.
pub struct PubSub {
    common: Common,
    store: Arc<dyn PubSubStore>,
    limits: Limits,
    metrics: Arc<Metrics>,
    /// Subscribers being served, against `pubsub.max_subscribers`.
    subscribers: Arc<AtomicUsize>,
    max_subscribers: usize,
    idempotency_window: std::time::Duration,
    /// Retention by channel glob, first match, then the default.
    rules: Vec<(String, Retention)>,
    retention: Retention,
}

/// How to publish one message.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// Also append it to the channel's stream.
    pub durable: bool,
    /// A repeat with this key within `pubsub.idempotency_window` answers
    /// the first publish's offset and delivers nothing.
    pub idempotency_key: Option<String>,
    /// Keep at most this many messages (at most the channel's retention).
    pub max_len: Option<usize>,
    /// Keep messages, and the channel, at most this long (at most the
    /// channel's retention).
    pub max_age: Option<std::time::Duration>,
}

/// Longest idempotency key.
const MAX_IDEMPOTENCY_KEY: usize = 256;
/// Longest epoch a subscriber may pass (they are ~40 bytes).
const MAX_EPOCH: usize = 128;
/// How long the epoch of a channel without messages and without a max age
/// is kept once a subscriber waits on it.
const IDLE_EPOCH: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// The longest max age a channel may have (a year).
pub const MAX_AGE: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

/// Gives a subscriber's slot back when its subscription is dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl PubSub {
    pub fn new(
        store: Arc<dyn PubSubStore>,
        limits: Limits,
        config: &PubSubConfig,
        metrics: Arc<Metrics>,
        common: Common,
    ) -> Self {
        PubSub {
            store,
            common,
            limits,
            metrics,
            subscribers: Arc::default(),
            max_subscribers: config.max_subscribers,
            idempotency_window: config.idempotency_window,
            rules: config
                .retention
                .iter()
                .map(|rule| {
                    let retention = Retention {
                        max_len: rule.max_len.unwrap_or(config.stream_max_len),
                        max_age: (!rule.max_age.is_zero()).then_some(rule.max_age),
                    };
                    (rule.channels.clone(), retention)
                })
                .collect(),
            retention: Retention {
                max_len: config.stream_max_len,
                max_age: (!config.stream_max_age.is_zero()).then_some(config.stream_max_age),
            },
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Subscribers being served now.
    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Relaxed)
    }

    /// Publishes; returns the offset of a durable message.
    pub async fn publish(
        &self,
        channel: &str,
        payload: Bytes,
        headers: BTreeMap<String, String>,
        durable: bool,
    ) -> Result<Option<Offset>> {
        let options = PublishOptions {
            durable,
            ..Default::default()
        };
        let published = self
            .publish_with(channel, payload, headers, options)
            .await?;
        Ok(published.offset)
    }

    /// What a durable channel keeps: the first retention rule matching it,
    /// else the default.
    pub fn retention(&self, channel: &str) -> Retention {
        self.rules
            .iter()
            .find(|(pattern, _)| glob::matches(pattern, channel))
            .map_or(self.retention, |(_, r)| *r)
    }

    /// Publishes; with an idempotency key, a repeat within
    /// `pubsub.idempotency_window` (from any sidecar) answers the first
    /// publish's offset and delivers nothing.
    pub async fn publish_with(
        &self,
        channel: &str,
        payload: Bytes,
        headers: BTreeMap<String, String>,
        options: PublishOptions,
    ) -> Result<Published> {
        let PublishOptions {
            durable,
            idempotency_key,
            max_len,
            max_age,
        } = options;
        let span = tracing::info_span!(
            "outrigger.pubsub.publish",
            channel,
            durable,
            bytes = payload.len(),
            idempotent = idempotency_key.is_some()
        );
        telemetry::observe(&self.metrics, "pubsub", "publish", span, async {
            self.check_channel(channel)?;
            validate::value("payload", payload.len(), &self.limits)?;
            if headers.len() > MAX_HEADERS
                || headers
                    .iter()
                    .any(|(k, v)| k.is_empty() || k.len() > MAX_HEADER_BYTES || v.len() > MAX_HEADER_BYTES)
            {
                return Err(Error::InvalidArgument(format!(
                    "at most {MAX_HEADERS} headers, with non-empty names, names and values of at most {MAX_HEADER_BYTES} bytes"
                )));
            }
            if let Some(key) = &idempotency_key
                && (key.is_empty()
                    || key.len() > MAX_IDEMPOTENCY_KEY
                    || key.chars().any(char::is_control))
            {
                return Err(Error::InvalidArgument(format!(
                    "an idempotency key is 1 to {MAX_IDEMPOTENCY_KEY} bytes without control characters"
                )));
            }
            let message = PubMessage {
                channel: channel.to_string(),
                payload,
                headers,
                offset: None,
            };
            let mut retention = self.retention(channel);
            if let Some(n) = max_len {
                if n == 0 || n > retention.max_len {
                    return Err(Error::InvalidArgument(format!(
                        "max_len must be 1 to {} on this channel",
                        retention.max_len
                    )));
                }
                retention.max_len = n;
            }
            if let Some(age) = max_age {
                let most = retention.max_age.unwrap_or(MAX_AGE);
                if age.is_zero() || age > most {
                    return Err(Error::InvalidArgument(format!(
                        "max_age_ms must be 1 to {} on this channel",
                        most.as_millis()
                    )));
                }
                retention.max_age = Some(age);
            }
            let how = Publish {
                durable,
                retention,
                idempotency: idempotency_key.map(|k| (k, self.idempotency_window)),
            };
            Ok(self.store.publish(message, &how).await?)
        })
        .await
    }

    /// Subscribes to channels and patterns; with `from`, first replays the
    /// one channel's durable messages after that offset (a
    /// [`Delivery::Resumed`] first says whether they run on from it).
    pub async fn subscribe(
        &self,
        channels: Vec<String>,
        patterns: Vec<String>,
        from: Option<ResumeFrom>,
    ) -> Result<Subscription> {
        let span = tracing::info_span!(
            "outrigger.pubsub.subscribe",
            channels = channels.len(),
            patterns = patterns.len()
        );
        telemetry::observe(&self.metrics, "pubsub", "subscribe", span, async {
            if channels.is_empty() && patterns.is_empty() {
                return Err(Error::InvalidArgument(
                    "subscribe to at least one channel or pattern".into(),
                ));
            }
            validate::batch(
                "channels and patterns",
                channels.len() + patterns.len(),
                &self.limits,
            )?;
            for channel in &channels {
                self.check_channel(channel)?;
            }
            for pattern in &patterns {
                self.check_channel(pattern)?;
                glob::validate(pattern).map_err(|r| Error::InvalidArgument(r.into()))?;
            }
            if from.is_some() && (channels.len() != 1 || !patterns.is_empty()) {
                return Err(Error::InvalidArgument(
                    "resuming from an offset needs exactly one channel and no patterns".into(),
                ));
            }
            if let Some(epoch) = from.as_ref().and_then(|f| f.epoch.as_deref())
                && (epoch.is_empty() || epoch.len() > MAX_EPOCH || epoch.chars().any(char::is_control))
            {
                return Err(Error::InvalidArgument(format!(
                    "an epoch is 1 to {MAX_EPOCH} bytes without control characters, as a resume or history answered it"
                )));
            }
            if self.subscribers.fetch_add(1, Ordering::Relaxed) >= self.max_subscribers {
                self.subscribers.fetch_sub(1, Ordering::Relaxed);
                return Err(Error::Exhausted(format!(
                    "this sidecar already serves {} subscribers (pubsub.max_subscribers)",
                    self.max_subscribers
                )));
            }
            let slot = Slot(self.subscribers.clone());
            // Live first: from here on everything published is buffered.
            let live = self.store.subscribe(&channels, &patterns).await?;
            let subscription: Subscription = match from {
                None => Box::pin(live.map(move |item| {
                    let _slot = &slot;
                    Ok(match item {
                        FeedItem::Item(m) => Delivery::Message(m),
                        FeedItem::Lagged(n) => Delivery::Lagged(n),
                    })
                })),
                Some(from) => {
                    let idle = self.retention(&channels[0]).max_age.unwrap_or(IDLE_EPOCH);
                    let channel = channels[0].clone();
                    resume(self.store.clone(), channel, from, idle, live, slot)
                }
            };
            Ok(subscription)
        })
        .await
    }

    /// Reads a durable channel's history without subscribing.
    pub async fn history(&self, channel: &str, query: HistoryQuery) -> Result<HistoryPage> {
        let span = tracing::info_span!("outrigger.pubsub.history", channel);
        telemetry::observe(&self.metrics, "pubsub", "history", span, async {
            self.check_channel(channel)?;
            let bounded = |what: &str, n: usize| {
                if (1..=MAX_HISTORY_PAGE).contains(&n) {
                    Ok(n)
                } else {
                    Err(Error::InvalidArgument(format!(
                        "{what} must be between 1 and {MAX_HISTORY_PAGE}, not {n}"
                    )))
                }
            };
            // What is older than the channel's max age is gone, even if
            // no publish has trimmed it yet.
            let oldest = self
                .retention(channel)
                .max_age
                .map_or(Offset::default(), |age| {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    Offset {
                        ms: now.saturating_sub(age.as_millis() as u64),
                        seq: 0,
                    }
                });
            if let Some(last) = query.last {
                if query.from.is_some()
                    || query.to.is_some()
                    || query.cursor.is_some()
                    || query.limit.is_some()
                {
                    return Err(Error::InvalidArgument(
                        "last cannot be combined with from, to, cursor or limit".into(),
                    ));
                }
                let range = Range {
                    from: oldest,
                    to: Offset::MAX,
                    newest_first: true,
                    limit: bounded("last", last)?,
                };
                let mut history = self.store.history(channel, range).await?;
                if !query.newest_first {
                    history.messages.reverse();
                }
                return Ok(HistoryPage {
                    epoch: history.epoch,
                    messages: history.messages,
                    next_cursor: None,
                });
            }
            let limit = bounded("limit", query.limit.unwrap_or(DEFAULT_HISTORY_PAGE))?;
            let mut range = Range {
                from: query.from.unwrap_or_default(),
                to: query.to.unwrap_or(Offset::MAX),
                newest_first: query.newest_first,
                limit,
            };
            if range.from > range.to {
                return Err(Error::InvalidArgument(format!(
                    "from ({}) is after to ({})",
                    range.from, range.to
                )));
            }
            match query.cursor {
                Some(c) if query.newest_first => range.to = range.to.min(c.prev()),
                Some(c) => range.from = range.from.max(c.next()),
                None => {}
            }
            range.from = range.from.max(oldest);
            if range.from > range.to {
                // Nothing to read, but the epoch still to tell.
                range.from = Offset::MAX;
                range.to = Offset::MAX;
            }
            let history = self.store.history(channel, range).await?;
            let messages = history.messages;
            let next_cursor = (messages.len() == limit)
                .then(|| messages.last().and_then(|m| m.offset))
                .flatten();
            Ok(HistoryPage {
                epoch: history.epoch,
                messages,
                next_cursor,
            })
        })
        .await
    }

    /// Drops a durable channel's messages before `before` (an editor's
    /// "snapshot written"); returns how many.
    pub async fn trim(&self, channel: &str, before: Offset) -> Result<u64> {
        let span = tracing::info_span!("outrigger.pubsub.trim", channel, %before);
        telemetry::observe(&self.metrics, "pubsub", "trim", span, async {
            self.check_channel(channel)?;
            Ok(self.store.trim(channel, before).await?)
        })
        .await
    }

    fn check_channel(&self, channel: &str) -> Result<()> {
        validate::name("channel", channel, &self.limits)
    }
}

/// The calls as both APIs serve them to a caller, once `authorize` has
/// passed: payloads go through the plugins' `on-value`, `publish` on the
/// way in and `deliver` on the way out.
impl PubSub {
    /// Whether any plugin sees payloads (if not, they are not copied).
    fn sees_values(&self) -> bool {
        self.common.plugins.sees_values(PrimitiveName::Pubsub)
    }

    /// [`PubSub::publish_with`], the payload through `on-value`
    /// (`publish`) first: what subscribers and the history get.
    pub async fn publish_for(
        &self,
        caller: &Caller,
        channel: &str,
        mut payload: Bytes,
        headers: BTreeMap<String, String>,
        options: PublishOptions,
    ) -> Result<Published> {
        if self.sees_values() {
            // The channel first: a plugin sees only channels pub/sub takes.
            self.check_channel(channel)?;
            payload =
                self.common
                    .plugins
                    .on_value(caller, ValuePoint::Publish, channel, payload)?;
        }
        self.publish_with(channel, payload, headers, options).await
    }

    /// [`PubSub::subscribe`], each message's payload through `on-value`
    /// (`deliver`) for this subscriber. A payload a plugin refuses ends
    /// the subscription with the reason: it is neither skipped (the
    /// subscriber would not know) nor passed on as stored.
    pub async fn subscribe_for(
        &self,
        caller: &Caller,
        channels: Vec<String>,
        patterns: Vec<String>,
        from: Option<ResumeFrom>,
    ) -> Result<Subscription> {
        let subscription = self.subscribe(channels, patterns, from).await?;
        if !self.sees_values() {
            return Ok(subscription);
        }
        let plugins = self.common.plugins.clone();
        let caller = caller.clone();
        Ok(Box::pin(subscription.scan(false, move |ended, item| {
            let item = match item {
                _ if *ended => None,
                Ok(Delivery::Message(m)) => {
                    let revealed = plugins.on_value(
                        &caller,
                        ValuePoint::Deliver,
                        &m.channel,
                        m.payload.clone(),
                    );
                    Some(match revealed {
                        Ok(payload) => Ok(Delivery::Message(Arc::new(PubMessage {
                            channel: m.channel.clone(),
                            payload,
                            headers: m.headers.clone(),
                            offset: m.offset,
                        }))),
                        Err(err) => {
                            *ended = true;
                            Err(err)
                        }
                    })
                }
                other => Some(other),
            };
            std::future::ready(item)
        })))
    }

    /// [`PubSub::history`], each payload through `on-value` (`deliver`)
    /// for this reader; one a plugin refuses fails the read.
    pub async fn history_for(
        &self,
        caller: &Caller,
        channel: &str,
        query: HistoryQuery,
    ) -> Result<HistoryPage> {
        let mut page = self.history(channel, query).await?;
        if self.sees_values() {
            for message in &mut page.messages {
                message.payload = self.common.plugins.on_value(
                    caller,
                    ValuePoint::Deliver,
                    channel,
                    std::mem::take(&mut message.payload),
                )?;
            }
        }
        Ok(page)
    }
}

/// Replay after the subscriber's offset, then the live feed without what
/// was replayed. Each page of the replay says whether it runs on from the
/// last offset delivered: the first one, and any that does not, is
/// announced ([`Delivery::Resumed`]). If the live feed overflows meanwhile,
/// replay resumes from the last offset delivered: a resumed subscriber
/// receives every durable message once, in order, however far behind it
/// falls, or is told what it missed (messages published without `durable`
/// on the same channel are not in the stream and can be missed).
fn resume(
    store: Arc<dyn PubSubStore>,
    channel: String,
    from: ResumeFrom,
    idle: std::time::Duration,
    live: Feed<Arc<PubMessage>>,
    slot: Slot,
) -> Subscription {
    struct State {
        store: Arc<dyn PubSubStore>,
        channel: String,
        /// The subscriber's epoch: as it said, then as the channel said.
        epoch: Option<String>,
        idle: std::time::Duration,
        /// The last durable offset delivered.
        last: Offset,
        page: VecDeque<PubMessage>,
        replaying: bool,
        /// Whether the first page was announced.
        resumed: bool,
        /// Whether the end of the first replay was announced.
        replayed: bool,
        /// Whether anything was delivered yet (else `last` is the resume
        /// point, not a delivered offset).
        delivered: bool,
        failed: bool,
        live: Feed<Arc<PubMessage>>,
        _slot: Slot,
    }
    let state = State {
        store,
        channel,
        epoch: from.epoch,
        idle,
        last: from.offset,
        page: VecDeque::new(),
        replaying: true,
        resumed: false,
        replayed: false,
        delivered: false,
        failed: false,
        live,
        _slot: slot,
    };
    Box::pin(futures::stream::unfold(state, |mut s| async move {
        if s.failed {
            return None;
        }
        loop {
            if let Some(message) = s.page.pop_front() {
                s.last = message.offset.unwrap_or(s.last);
                s.delivered = true;
                return Some((Ok(Delivery::Message(Arc::new(message))), s));
            }
            if !s.replaying && !s.replayed {
                s.replayed = true;
                let last = s.delivered.then_some(s.last);
                return Some((Ok(Delivery::Replayed(last)), s));
            }
            if s.replaying {
                let at = store::Resume {
                    epoch: s.epoch.as_deref(),
                    after: s.last,
                    count: REPLAY_PAGE,
                    idle: s.idle,
                };
                match s.store.recover(&s.channel, at).await {
                    Ok(page) => {
                        s.replaying = page.more;
                        s.page.extend(page.messages);
                        s.epoch = Some(page.epoch.clone());
                        if s.resumed && page.recovered {
                            continue;
                        }
                        // Not delivered, but what follows comes after it.
                        s.last = page.after;
                        s.resumed = true;
                        let resumed = Resumed {
                            recovered: page.recovered,
                            epoch: page.epoch,
                            from: s.page.front().and_then(|m| m.offset),
                        };
                        return Some((Ok(Delivery::Resumed(resumed)), s));
                    }
                    Err(err) => {
                        s.failed = true;
                        return Some((Err(Error::from(err)), s));
                    }
                }
            }
            match s.live.next().await? {
                FeedItem::Item(m) if m.offset.is_some_and(|o| o <= s.last) => continue,
                FeedItem::Item(m) => {
                    if let Some(o) = m.offset {
                        s.last = o;
                        s.delivered = true;
                    }
                    return Some((Ok(Delivery::Message(m)), s));
                }
                // Fell behind the live feed (typically while a long
                // replay ran): what was missed is in the stream, so catch
                // up from it again rather than report a loss.
                FeedItem::Lagged(_) => s.replaying = true,
            }
        }
    }))
}

impl Primitive for PubSub {
    fn common(&self) -> &Common {
        &self.common
    }
}
