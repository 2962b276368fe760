//! The guard's counts in Redis, shared by every replica: one script per job (decide, and count unless
//! refused) and one per feedback (verify once). The arithmetic is `budget.rs`'s, in Lua; a test runs both
//! on the same history. Each destination is a hash of `s<hour>` (sent), `v<hour>` (verified, by the hour
//! the code was sent) and `d<day>` (verified per day, for the 14-day peak), stale fields dropped as they
//! are read; each job a string `U|hour|channel|country|range|ip|region` (`V…` once verified, `X…` once
//! a receipt said it was not delivered) that expires with
//! the day window. The outage detector's inputs ([`super::outage`]) are one hash, `…:guard:feedback`:
//! `at` (last feedback), `v` and `v_at` (decayed verified count), `sends` (early sends to known ranges).

use std::sync::atomic::{AtomicU64, Ordering};

use super::budget::{DAYS_KEPT, DayCount, HOURS_KEPT, HourCount, Tally};
use super::{Assessment, Destinations, Feedback, FeedbackState, Level, Refusals, Settings};
use crate::job::Channel;
use crate::privacy;

/// Job entries live through the day window and a little more (feedback comes within minutes).
const JOB_TTL_SECS: u64 = (HOURS_KEPT as u64) * 3600;
/// Destinations live as long as their oldest field can matter.
const TALLY_TTL_SECS: u64 = (DAYS_KEPT as u64) * 86_400;

/// KEYS = the job's tally keys, the range first, then the guard's prefix. ARGV = now, refusals (0 none,
/// 1 all, 2 all but to a range with verified history), ratio, the job's entry, the learning period in
/// seconds, then floor_hour and floor_day for each tally key, then the tally TTL, the job key's id, the job
/// TTL and `outage_after` in seconds. Refuses only when refusals are asked and the shared learning clock
/// (`:since`) has run the learning period. Returns {over (0 = none, else the index of the first key over
/// budget), counted, range known, enforcing (1/0 each), since, then the outage detector's inputs: last
/// feedback (0 = never), decayed verified count (a string: Lua numbers reach Redis as integers), its time,
/// early sends to known ranges}.
const CHECK: &str = r#"
local now = tonumber(ARGV[1])
local ratio = tonumber(ARGV[3])
local learning = tonumber(ARGV[5])
local n = #KEYS - 1
local hour = math.floor(now / 3600)
local today = math.floor(hour / 24)
local previous_weight = 1 - (now % 3600) / 3600
local over = 0
local known = 0
for i = 1, n do
  local fields = redis.call('HGETALL', KEYS[i])
  local sent, verified, stale = {}, {}, {}
  local peak = 0
  for j = 1, #fields, 2 do
    local name = fields[j]
    local value = tonumber(fields[j + 1])
    local kind = string.sub(name, 1, 1)
    local t = tonumber(string.sub(name, 2))
    if kind == 'd' then
      if t + 15 <= today then
        stale[#stale + 1] = name
      elseif t < today and t + 14 >= today and value > peak then
        peak = value
      end
    elseif t + 25 <= hour then
      stale[#stale + 1] = name
    elseif kind == 's' then
      sent[t] = value
    else
      verified[t] = value
    end
  end
  if #stale > 0 then redis.call('HDEL', KEYS[i], unpack(stale)) end
  local uh, vh, ud, vd = 0, 0, 0, 0
  for t, s in pairs(sent) do
    local v = verified[t] or 0
    local u = math.max(s - v, 0)
    if t + 24 > hour and t <= hour then ud = ud + u end
    if t == hour then uh = uh + u elseif t + 1 == hour then uh = uh + u * previous_weight end
  end
  for t, v in pairs(verified) do
    if t + 24 > hour and t <= hour then vd = vd + v end
    if t == hour then vh = vh + v elseif t + 1 == hour then vh = vh + v * previous_weight end
  end
  local floor_hour = tonumber(ARGV[4 + 2 * i])
  local floor_day = tonumber(ARGV[5 + 2 * i])
  local day = floor_day + ratio * math.max(peak, vd)
  local per_hour = math.max(floor_hour + ratio * vh, day / 3)
  -- The country (key 2) does not judge a range whose users verify (key 1 with history).
  local judged = not (i == 2 and known == 1)
  if judged and over == 0 and not (uh + 1 <= per_hour and ud + 1 <= day) then over = i end
  if i == 1 and (vd > 0 or peak > 0) then known = 1 end
end
local prefix = KEYS[n + 1]
local since = tonumber(redis.call('GET', prefix .. ':since') or '0')
local enforcing = 0
if ARGV[2] ~= '0' and since > 0 and now - since >= learning then enforcing = 1 end
local fb = prefix .. ':feedback'
local state = redis.call('HMGET', fb, 'at', 'v', 'v_at', 'sends')
local at = tonumber(state[1] or '0')
local v = state[2] or '0'
local v_at = tonumber(state[3] or '0')
local sends = tonumber(state[4] or '0')
-- During an outage (2) a range with verified history is not refused; every other destination is.
local refuse = enforcing == 1 and (ARGV[2] == '1' or known == 0)
if over > 0 and refuse then
  return {over, 0, known, enforcing, since, at, v, v_at, sends}
end
for i = 1, n do
  redis.call('HINCRBY', KEYS[i], 's' .. hour, 1)
  redis.call('EXPIRE', KEYS[i], ARGV[6 + 2 * n])
end
redis.call('SET', prefix .. ':j:' .. ARGV[7 + 2 * n], ARGV[4], 'EX', ARGV[8 + 2 * n])
-- outage.rs, known_send: only codes to ranges that verify, and only early in a silence, count.
if known == 1 and at > 0 and now - at <= tonumber(ARGV[9 + 2 * n]) then
  sends = redis.call('HINCRBY', fb, 'sends', 1)
  redis.call('EXPIRE', fb, ARGV[6 + 2 * n])
end
return {over, 1, known, enforcing, since, at, v, v_at, sends}
"#;

/// KEYS = the guard's prefix; ARGV = the job key's id, now, the tally TTL, `outage_after` in seconds.
/// Returns {0} unknown, {1} duplicate, {2, entry} counted now.
const VERIFIED: &str = r#"
local prefix = KEYS[1]
local now = tonumber(ARGV[2])
local window = tonumber(ARGV[4])
-- Any feedback proves the MFA server's publisher works (outage.rs, feedback; shared by replicas).
local fb = prefix .. ':feedback'
redis.call('HSET', fb, 'at', now, 'sends', 0)
redis.call('EXPIRE', fb, ARGV[3])
local job = prefix .. ':j:' .. ARGV[1]
local entry = redis.call('GET', job)
if not entry then return {0} end
if string.sub(entry, 1, 1) ~= 'U' then return {1} end
local old = redis.call('HMGET', fb, 'v', 'v_at')
local v = 0
if window > 0 then
  local elapsed = math.max(now - tonumber(old[2] or '0'), 0)
  v = tonumber(old[1] or '0') * math.exp(-elapsed / window)
end
redis.call('HSET', fb, 'v', string.format('%.17g', v + 1), 'v_at', now)
local ttl = redis.call('TTL', job)
if ttl < 1 then ttl = 1 end
redis.call('SET', job, 'V' .. string.sub(entry, 2), 'EX', ttl)
local parts = {}
for part in string.gmatch(entry .. '|', '([^|]*)|') do parts[#parts + 1] = part end
local hour = tonumber(parts[2])
local region = parts[7]
if region == nil or region == '' then region = parts[4] end
local keys = {prefix .. ':r:' .. parts[5], prefix .. ':c:' .. region}
if parts[6] ~= nil and parts[6] ~= '' and parts[6] ~= '-' then keys[#keys + 1] = prefix .. ':i:' .. parts[6] end
for _, key in ipairs(keys) do
  if redis.call('HEXISTS', key, 's' .. hour) == 1 then redis.call('HINCRBY', key, 'v' .. hour, 1) end
  redis.call('HINCRBY', key, 'd' .. math.floor(hour / 24), 1)
  redis.call('EXPIRE', key, ARGV[3])
end
redis.call('SET', prefix .. ':since', ARGV[2], 'NX')
return {2, entry}
"#;

/// KEYS = the job key. Marks a job never verified (`X…`) unless its feedback came first.
const CLOSE: &str = r#"
local entry = redis.call('GET', KEYS[1])
if not entry or string.sub(entry, 1, 1) ~= 'U' then return 0 end
local ttl = redis.call('TTL', KEYS[1])
if ttl < 1 then ttl = 1 end
redis.call('SET', KEYS[1], 'X' .. string.sub(entry, 2), 'EX', ttl)
return 1
"#;

/// The guard's tallies in Redis, shared by every replica: one script per job.
pub struct Redis {
    conn: redis::aio::ConnectionManager,
    check: redis::Script,
    verified: redis::Script,
    prefix: String,
    /// The shared learning clock, as last read from Redis; 0 = no verified code yet.
    since: AtomicU64,
}

impl Redis {
    pub fn new(conn: redis::aio::ConnectionManager, namespace: &str) -> Redis {
        Redis {
            conn,
            check: redis::Script::new(CHECK),
            verified: redis::Script::new(VERIFIED),
            prefix: format!("herald:{namespace}:guard"),
            since: AtomicU64::new(0),
        }
    }

    fn tally_key(&self, level: Level, id: &str) -> String {
        format!("{}:{}:{id}", self.prefix, level.tag())
    }

    pub async fn check(
        &self,
        job_id: &str,
        dest: &Destinations,
        s: &Settings,
        now: u64,
        refusals: Refusals,
    ) -> Result<Assessment, redis::RedisError> {
        let keys = dest.keys();
        let mut invocation = self.check.prepare_invoke();
        for (level, id) in &keys {
            invocation.key(self.tally_key(*level, id));
        }
        invocation.key(&self.prefix);
        let entry = format!(
            "U|{}|{}|{}|{}|{}|{}",
            now / 3600,
            dest.channel.as_str(),
            dest.country,
            dest.range,
            dest.ip.as_deref().unwrap_or("-"),
            dest.region
        );
        invocation
            .arg(now)
            .arg(match refusals {
                Refusals::None => 0u8,
                Refusals::All => 1,
                Refusals::UnlessRangeVerified => 2,
            })
            .arg(s.ratio)
            .arg(entry)
            .arg(s.learning_period.as_secs());
        for (level, _) in &keys {
            let floors = level.floors(s);
            invocation.arg(floors.hour).arg(floors.day);
        }
        invocation
            .arg(TALLY_TTL_SECS)
            .arg(privacy::hashed(job_id))
            .arg(JOB_TTL_SECS)
            .arg(s.outage_window());
        type Answer = (usize, u8, u8, u8, u64, u64, String, u64, u64);
        let (over, counted, known, enforcing, since, at, verified, verified_at, sends): Answer =
            invocation.invoke_async(&mut self.conn.clone()).await?;
        self.since.store(since, Ordering::Relaxed);
        Ok(Assessment {
            over: over.checked_sub(1).and_then(|i| keys.get(i)).map(|(l, _)| *l),
            counted: counted == 1,
            range_known: known == 1,
            enforcing: enforcing == 1,
            feedback_state: FeedbackState {
                last_feedback: at,
                // Written by VERIFIED as a number; anything else (a hand-edited key) counts nothing.
                verified: verified.parse().ok().filter(|v: &f64| v.is_finite()).unwrap_or(0.0),
                verified_at,
                early_sends: sends,
            },
        })
    }

    /// A code was verified; `window` is `outage_after` in seconds (the outage detector's).
    pub async fn verified(&self, job_id: &str, now: u64, window: u64) -> Result<Feedback, redis::RedisError> {
        let answer: Vec<redis::Value> = self
            .verified
            .key(&self.prefix)
            .arg(privacy::hashed(job_id))
            .arg(now.max(1))
            .arg(TALLY_TTL_SECS)
            .arg(window)
            .invoke_async(&mut self.conn.clone())
            .await?;
        let code: u8 = answer
            .first()
            .map(|v| redis::from_redis_value(v.clone()))
            .transpose()?
            .unwrap_or(0);
        Ok(match code {
            1 => Feedback::Duplicate,
            2 => {
                let entry: String = answer
                    .get(1)
                    .map(|v| redis::from_redis_value(v.clone()))
                    .transpose()?
                    .unwrap_or_default();
                let mut parts = entry.split('|').skip(2);
                let channel = parts.next().and_then(Channel::parse).unwrap_or(Channel::Sms);
                let country = parts.next().and_then(|c| c.parse().ok()).unwrap_or(0);
                if self.since.load(Ordering::Relaxed) == 0 {
                    self.since.store(now.max(1), Ordering::Relaxed);
                }
                Feedback::Counted { channel, country }
            }
            _ => Feedback::Unknown,
        })
    }

    pub async fn close(&self, job_id: &str) -> Result<(), redis::RedisError> {
        let key = format!("{}:j:{}", self.prefix, privacy::hashed(job_id));
        let _: i64 = redis::Script::new(CLOSE)
            .key(key)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    pub fn since(&self) -> Option<u64> {
        match self.since.load(Ordering::Relaxed) {
            0 => None,
            s => Some(s),
        }
    }

    /// One destination's history, read back into a [`Tally`] (for `explain`).
    pub async fn tally(&self, level: Level, id: &str) -> Result<Tally, redis::RedisError> {
        let fields: Vec<(String, u32)> = redis::cmd("HGETALL")
            .arg(self.tally_key(level, id))
            .query_async(&mut self.conn.clone())
            .await?;
        let mut tally = Tally::default();
        for (name, value) in fields {
            let Some(t) = name.get(1..).and_then(|t| t.parse::<u32>().ok()) else {
                continue;
            };
            match name.as_bytes()[0] {
                b'd' => tally.days.push(DayCount {
                    day: t,
                    verified: value,
                }),
                kind => {
                    let i = match tally.hours.iter().position(|h| h.hour == t) {
                        Some(i) => i,
                        None => {
                            tally.hours.push(HourCount {
                                hour: t,
                                sent: 0,
                                verified: 0,
                            });
                            tally.hours.len() - 1
                        }
                    };
                    if kind == b's' {
                        tally.hours[i].sent = value;
                    } else {
                        tally.hours[i].verified = value;
                    }
                }
            }
        }
        Ok(tally)
    }
}
