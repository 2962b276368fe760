//! Receipt state per sent message: what was sent (never the number or the code), the highest status
//! rank seen, and whether its final status was evented. Kept as long as outcome records
//! ([`RETENTION`]); in this process (bounded) or in Redis, shared by replicas.
//!
//! A final status is taken in two steps so that it is evented exactly once and never lost: [`State::advance`]
//! claims it (`publishing`, with a lease), the caller publishes, then [`State::settle`] marks it evented
//! or, when the broker refused it, gives the claim back so the provider's retry can take it. A claim whose
//! holder died runs out with its lease.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::status::{Reported, Status};
use crate::clock;
use crate::job::Channel;
use crate::store::RETENTION;
use crate::sync::lock;

/// How long a replica may take to publish a final receipt's event before another may.
pub const PUBLISH_LEASE: Duration = Duration::from_secs(30);

/// What herald sent, as its receipts need it: all of it masked or non-personal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentMessage {
    pub job_id: String,
    pub channel: Channel,
    /// E.164 calling code.
    pub country: String,
    /// Masked (`+1415*****23`).
    pub recipient: String,
    pub provider: String,
    pub provider_message_id: Option<String>,
    /// When the provider accepted it, in ms since the epoch.
    pub accepted_at_ms: u64,
    /// The workflow step it was (docs/workflows.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
}

/// What a status did to a message's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Advance {
    /// No message with this id (never sent by herald, or older than the retention).
    Unknown,
    /// An intermediate status that moved the message forward.
    Moved,
    /// A status at or below the one already seen (a repeat, or out of order).
    Stale,
    /// The message's first final status: the caller publishes its event, then calls [`State::settle`].
    Final(SentMessage),
    /// A final status after the final one was evented.
    Duplicate,
    /// Another callback (on any replica) is publishing this message's final event right now.
    Busy,
    /// A status the message's channel cannot have, or one in another channel's vocabulary (a call's
    /// `in-progress` for an SMS): nothing moved.
    Ignored,
}

#[derive(Debug, thiserror::Error)]
#[error("receipt state unavailable: {0}")]
pub struct StateError(String);

/// The receipt state of this deployment, in this process or in Redis (the same shape as the outcome
/// store's and the fraud guard's backends).
pub struct State {
    backend: Backend,
}

enum Backend {
    Local(Mutex<Local>),
    Redis(Redis),
}

impl State {
    pub fn local(capacity: usize) -> State {
        State {
            backend: Backend::Local(Mutex::new(Local::new(capacity, RETENTION))),
        }
    }

    pub fn redis(conn: redis::aio::ConnectionManager, namespace: &str) -> State {
        State {
            backend: Backend::Redis(Redis {
                conn,
                prefix: format!("herald:{namespace}:receipt:"),
            }),
        }
    }

    /// [`State::record`] without a future where the state is in this process (a map insert); `sent`
    /// comes back unrecorded where it is in Redis, for the caller to write without waiting.
    pub fn record_in_process(&self, key: &str, sent: SentMessage) -> Option<SentMessage> {
        match &self.backend {
            Backend::Local(local) => {
                lock(local).insert(key, sent, Instant::now());
                None
            }
            Backend::Redis(_) => Some(sent),
        }
    }

    /// Remembers a sent message under `key` (provider and its id for the message).
    pub async fn record(&self, key: &str, sent: &SentMessage) -> Result<(), StateError> {
        match &self.backend {
            Backend::Local(local) => {
                lock(local).insert(key, sent.clone(), Instant::now());
                Ok(())
            }
            Backend::Redis(redis) => redis.record(key, sent).await,
        }
    }

    /// Remembers a sent message whose first [`State::record`] failed, unless `key` was recorded since: a
    /// newer record may have moved on, and must not be reset.
    pub async fn record_late(&self, key: &str, sent: &SentMessage) -> Result<(), StateError> {
        match &self.backend {
            Backend::Local(local) => {
                let mut local = lock(local);
                if !local.entries.contains_key(key) {
                    local.insert(key, sent.clone(), Instant::now());
                }
                Ok(())
            }
            Backend::Redis(redis) => redis.record_late(key, sent).await,
        }
    }

    /// Moves the message under `key` by `reported`, if it applies to the message's channel.
    pub async fn advance(&self, key: &str, reported: Reported) -> Result<Advance, StateError> {
        match &self.backend {
            Backend::Local(local) => Ok(lock(local).advance(key, reported, Instant::now())),
            Backend::Redis(redis) => redis.advance(key, reported).await,
        }
    }

    /// After an [`Advance::Final`]: `published` marks it evented; otherwise the claim is given back.
    pub async fn settle(&self, key: &str, published: bool) -> Result<(), StateError> {
        match &self.backend {
            Backend::Local(local) => {
                lock(local).settle(key, published);
                Ok(())
            }
            Backend::Redis(redis) => redis.settle(key, published).await,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finality {
    Open,
    Publishing(Instant),
    Evented,
}

struct Entry {
    sent: SentMessage,
    rank: u8,
    finality: Finality,
    at: Instant,
}

/// This process's receipt state: at most `capacity` messages, each for `ttl`; the oldest go first.
pub struct Local {
    entries: HashMap<String, Entry>,
    /// Keys in insertion order (= expiry order), with their insertion time.
    order: VecDeque<(Instant, String)>,
    capacity: usize,
    ttl: Duration,
}

impl Local {
    pub fn new(capacity: usize, ttl: Duration) -> Local {
        Local {
            entries: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            ttl,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn insert(&mut self, key: &str, sent: SentMessage, now: Instant) {
        self.expire(now);
        while self.entries.len() >= self.capacity {
            let Some((at, oldest)) = self.order.pop_front() else {
                break;
            };
            self.remove_if_at(&oldest, at);
        }
        self.entries.insert(
            key.to_owned(),
            Entry {
                sent,
                rank: 0,
                finality: Finality::Open,
                at: now,
            },
        );
        self.order.push_back((now, key.to_owned()));
    }

    /// Drops a key only if it is the entry inserted at `at` (a key recorded again is newer).
    fn remove_if_at(&mut self, key: &str, at: Instant) {
        if self.entries.get(key).is_some_and(|e| e.at == at) {
            self.entries.remove(key);
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < self.ttl {
                break;
            }
            let (at, key) = self.order.pop_front().expect("just seen");
            self.remove_if_at(&key, at);
        }
    }

    fn advance(&mut self, key: &str, reported: Reported, now: Instant) -> Advance {
        self.expire(now);
        let Some(entry) = self.entries.get_mut(key) else {
            return Advance::Unknown;
        };
        if !reported.applies_to(entry.sent.channel) {
            return Advance::Ignored;
        }
        let status = reported.status;
        let rank = status.rank();
        if status.is_final() {
            match entry.finality {
                Finality::Evented => return Advance::Duplicate,
                Finality::Publishing(since) if now.duration_since(since) < PUBLISH_LEASE => return Advance::Busy,
                _ => {}
            }
            // The rank moves once the final status is evented (settle): a claim given back moves nothing.
            entry.finality = Finality::Publishing(now);
            return Advance::Final(entry.sent.clone());
        }
        let closed = entry.finality != Finality::Open && rank < Status::Delivered.rank();
        if rank > entry.rank && !closed {
            entry.rank = rank;
            Advance::Moved
        } else {
            Advance::Stale
        }
    }

    fn settle(&mut self, key: &str, published: bool) {
        if let Some(entry) = self.entries.get_mut(key)
            && matches!(entry.finality, Finality::Publishing(_))
        {
            if published {
                entry.finality = Finality::Evented;
                entry.rank = entry.rank.max(Status::Delivered.rank());
            } else {
                entry.finality = Finality::Open;
            }
        }
    }
}

/// Receipt state in Redis: one hash per message (`sent`, `rank`, `final`, `since`), expiring with the
/// outcome records.
pub struct Redis {
    conn: redis::aio::ConnectionManager,
    prefix: String,
}

/// Moves a message forward, atomically across replicas: [`Local::advance`] in Lua. ARGV: rank, is-final
/// (0/1), now (ms), lease (ms), the final statuses' rank, the channels the status applies to
/// ([`Reported::channels`]). Returns {0} unknown, {1} moved, {2, sent} final (claimed), {3} duplicate,
/// {4} busy, {5} stale, {6} ignored (not a status of the message's channel).
const ADVANCE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local sent = redis.call('HGET', KEYS[1], 'sent')
local ok, message = pcall(cjson.decode, sent or '')
local channel = ok and type(message) == 'table' and message.channel
if type(channel) ~= 'string' or not string.find(ARGV[6], ',' .. channel .. ',', 1, true) then return {6} end
local rank = tonumber(ARGV[1])
local current = tonumber(redis.call('HGET', KEYS[1], 'rank') or '0')
local state = redis.call('HGET', KEYS[1], 'final') or ''
if ARGV[2] == '1' then
  if state == 'evented' then return {3} end
  if state == 'publishing' then
    local since = tonumber(redis.call('HGET', KEYS[1], 'since') or '0')
    if tonumber(ARGV[3]) - since < tonumber(ARGV[4]) then return {4} end
  end
  redis.call('HSET', KEYS[1], 'final', 'publishing', 'since', ARGV[3])
  return {2, sent}
end
if rank > current and not (state ~= '' and rank < tonumber(ARGV[5])) then
  redis.call('HSET', KEYS[1], 'rank', rank)
  return {1}
end
return {5}
"#;

/// [`State::record_late`]: a record written only where there is none. ARGV: the sent message, the expiry
/// (s). Returns 1 when written.
const RECORD_LATE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'sent', ARGV[1], 'rank', 0)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"#;

/// Marks a claimed final status evented (ARGV[1] = 1; the rank becomes at least ARGV[2], the final
/// statuses' rank) or gives the claim back (0).
const SETTLE: &str = r#"
if redis.call('HGET', KEYS[1], 'final') ~= 'publishing' then return 0 end
if ARGV[1] == '1' then
  redis.call('HSET', KEYS[1], 'final', 'evented')
  if tonumber(redis.call('HGET', KEYS[1], 'rank') or '0') < tonumber(ARGV[2]) then
    redis.call('HSET', KEYS[1], 'rank', ARGV[2])
  end
else
  redis.call('HSET', KEYS[1], 'final', '')
end
return 1
"#;

impl Redis {
    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    async fn record(&self, key: &str, sent: &SentMessage) -> Result<(), StateError> {
        let json = serde_json::to_string(sent).map_err(|e| StateError(e.to_string()))?;
        let key = self.key(key);
        let _: () = redis::pipe()
            .atomic()
            .cmd("HSET")
            .arg(&key)
            .arg("sent")
            .arg(json)
            .arg("rank")
            .arg(0)
            .ignore()
            .cmd("EXPIRE")
            .arg(&key)
            .arg(RETENTION.as_secs())
            .ignore()
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| StateError(e.to_string()))?;
        Ok(())
    }

    async fn record_late(&self, key: &str, sent: &SentMessage) -> Result<(), StateError> {
        let json = serde_json::to_string(sent).map_err(|e| StateError(e.to_string()))?;
        let _: i64 = redis::cmd("EVAL")
            .arg(RECORD_LATE)
            .arg(1)
            .arg(self.key(key))
            .arg(json)
            .arg(RETENTION.as_secs())
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| StateError(e.to_string()))?;
        Ok(())
    }

    async fn advance(&self, key: &str, reported: Reported) -> Result<Advance, StateError> {
        let status = reported.status;
        let (code, sent): (u8, Option<String>) = {
            let reply: Vec<redis::Value> = redis::cmd("EVAL")
                .arg(ADVANCE)
                .arg(1)
                .arg(self.key(key))
                .arg(status.rank())
                .arg(if status.is_final() { "1" } else { "0" })
                .arg(clock::unix_millis())
                .arg(PUBLISH_LEASE.as_millis() as u64)
                .arg(Status::Delivered.rank())
                .arg(reported.channels())
                .query_async(&mut self.conn.clone())
                .await
                .map_err(|e| StateError(e.to_string()))?;
            let code = reply
                .first()
                .and_then(|v| redis::from_redis_value_ref::<u8>(v).ok())
                .ok_or_else(|| StateError("unexpected reply to the receipt script".into()))?;
            let sent = reply.get(1).and_then(|v| redis::from_redis_value_ref::<String>(v).ok());
            (code, sent)
        };
        Ok(match code {
            0 => Advance::Unknown,
            1 => Advance::Moved,
            2 => {
                let json = sent.ok_or_else(|| StateError("receipt without its message".into()))?;
                Advance::Final(serde_json::from_str(&json).map_err(|e| StateError(e.to_string()))?)
            }
            3 => Advance::Duplicate,
            4 => Advance::Busy,
            6 => Advance::Ignored,
            _ => Advance::Stale,
        })
    }

    async fn settle(&self, key: &str, published: bool) -> Result<(), StateError> {
        let _: i64 = redis::cmd("EVAL")
            .arg(SETTLE)
            .arg(1)
            .arg(self.key(key))
            .arg(if published { "1" } else { "0" })
            .arg(Status::Delivered.rank())
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| StateError(e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(status: Status) -> Reported {
        Reported::message(status)
    }

    fn sent(job: &str) -> SentMessage {
        SentMessage {
            job_id: job.into(),
            channel: Channel::Sms,
            country: "1".into(),
            recipient: "+1415*****23".into(),
            provider: "twilio".into(),
            provider_message_id: Some(format!("SM{job}")),
            accepted_at_ms: 1,
            step: None,
        }
    }

    #[test]
    fn statuses_only_move_forward_and_a_final_one_is_taken_once() {
        let mut local = Local::new(10, Duration::from_secs(60));
        let t = Instant::now();
        assert_eq!(local.advance("a", msg(Status::Sent), t), Advance::Unknown);
        local.insert("a", sent("a"), t);
        assert_eq!(local.advance("a", msg(Status::Queued), t), Advance::Moved);
        assert_eq!(local.advance("a", msg(Status::Sent), t), Advance::Moved);
        assert_eq!(local.advance("a", msg(Status::Sent), t), Advance::Stale);
        assert_eq!(local.advance("a", msg(Status::Queued), t), Advance::Stale);
        assert_eq!(local.advance("a", msg(Status::Delivered), t), Advance::Final(sent("a")));
        // While its event is being published, the same final status elsewhere waits.
        assert_eq!(local.advance("a", msg(Status::Delivered), t), Advance::Busy);
        local.settle("a", true);
        assert_eq!(local.advance("a", msg(Status::Delivered), t), Advance::Duplicate);
        assert_eq!(local.advance("a", msg(Status::Failed), t), Advance::Duplicate);
        assert_eq!(local.advance("a", msg(Status::Sent), t), Advance::Stale);
        assert_eq!(local.advance("a", msg(Status::Read), t), Advance::Moved);
    }

    /// The outside attack's seventh finding: a signed `CallStatus=in-progress` for an SMS's sid, or the
    /// custom provider's `in-progress` for an SMS job, moved the SMS to rank 5, past `sent`.
    #[test]
    fn a_status_of_another_channel_moves_nothing() {
        let mut local = Local::new(10, Duration::from_secs(60));
        let t = Instant::now();
        local.insert("a", sent("a"), t);
        assert_eq!(local.advance("a", msg(Status::Queued), t), Advance::Moved);
        for other in [
            Reported::call(Status::InProgress),
            Reported::unsaid(Status::InProgress),
            Reported::call(Status::Ringing),
            Reported::call(Status::Queued),
            Reported::call(Status::Completed),
            Reported::call(Status::Failed),
            Reported::unsaid(Status::Busy),
        ] {
            assert_eq!(local.advance("a", other, t), Advance::Ignored, "{other:?}");
        }
        // Nothing moved: `sent` still moves it, and its own final status is still the first.
        assert_eq!(local.advance("a", msg(Status::Sent), t), Advance::Moved);
        assert_eq!(
            local.advance("a", Reported::unsaid(Status::Failed), t),
            Advance::Final(sent("a"))
        );
        let mut voice = sent("v");
        voice.channel = Channel::Voice;
        local.insert("v", voice, t);
        assert_eq!(local.advance("v", msg(Status::Sent), t), Advance::Ignored);
        assert_eq!(local.advance("v", msg(Status::Queued), t), Advance::Ignored);
        assert_eq!(local.advance("v", Reported::call(Status::Ringing), t), Advance::Moved);
    }

    #[test]
    fn a_late_record_never_resets_one_written_since() {
        let local = State::local(10);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            local.record("a", &sent("a")).await.unwrap();
            assert_eq!(local.advance("a", msg(Status::Sent)).await.unwrap(), Advance::Moved);
            local.record_late("a", &sent("late")).await.unwrap();
            assert_eq!(local.advance("a", msg(Status::Sent)).await.unwrap(), Advance::Stale);
            local.record_late("b", &sent("b")).await.unwrap();
            assert_eq!(local.advance("b", msg(Status::Sent)).await.unwrap(), Advance::Moved);
        });
    }

    #[test]
    fn a_final_status_whose_event_failed_is_taken_again() {
        let mut local = Local::new(10, Duration::from_secs(60));
        let t = Instant::now();
        local.insert("a", sent("a"), t);
        assert!(matches!(
            local.advance("a", msg(Status::Undelivered), t),
            Advance::Final(_)
        ));
        // While it is claimed, a late intermediate status moves nothing.
        assert_eq!(local.advance("a", msg(Status::Sent), t), Advance::Stale);
        local.settle("a", false);
        // Given back: nothing moved, not even the rank.
        assert_eq!(local.advance("a", msg(Status::Sent), t), Advance::Moved);
        assert!(matches!(
            local.advance("a", msg(Status::Undelivered), t),
            Advance::Final(_)
        ));
        // A holder that died: its claim runs out with the lease.
        assert!(matches!(
            local.advance("a", msg(Status::Undelivered), t + PUBLISH_LEASE),
            Advance::Final(_)
        ));
    }

    #[test]
    fn local_state_is_bounded_in_count_and_time() {
        let mut local = Local::new(3, Duration::from_secs(60));
        let t = Instant::now();
        for (i, key) in ["a", "b", "c", "d"].iter().enumerate() {
            local.insert(key, sent(key), t + Duration::from_secs(i as u64));
        }
        assert_eq!(local.len(), 3);
        assert_eq!(local.advance("a", msg(Status::Sent), t), Advance::Unknown);
        assert_eq!(local.advance("d", msg(Status::Sent), t), Advance::Moved);
        // 60 s after b was recorded, b is gone; c and d remain.
        assert_eq!(
            local.advance("b", msg(Status::Sent), t + Duration::from_secs(61)),
            Advance::Unknown
        );
        assert_eq!(local.len(), 2);
        // A key recorded again lives from its new time.
        local.insert("c", sent("c"), t + Duration::from_secs(62));
        assert_eq!(
            local.advance("c", msg(Status::Sent), t + Duration::from_secs(100)),
            Advance::Moved
        );
    }
}
