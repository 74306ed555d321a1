//! Presence in Redis: which member holds which id, the id's owner, and each member's own
//! record. Every change of an id's holder is one Lua script, so a claim is atomic across the
//! cluster. Pure data and scripts here; the I/O is in `cluster`.

use std::net::SocketAddr;

use redis::Script;
use serde::{Deserialize, Serialize};

use super::super::broker::AgentView;
use crate::protocol::{ServiceId, Verifier};

/// Every key and channel starts with this, so a Redis shared with other software stays apart.
const PREFIX: &str = "p2pnc:";

/// The presence key of `id`: the record of the member holding it.
pub(super) fn agent_key(id: &str) -> String {
    format!("{PREFIX}agent:{id}")
}

/// The owner key of `id`: the verifier of its owner, kept an id-grace longer than the presence.
pub(super) fn owner_key(id: &str) -> String {
    format!("{PREFIX}owner:{id}")
}

/// A member's own record.
pub(super) fn member_key(member: &str) -> String {
    format!("{PREFIX}member:{member}")
}

/// The pattern of every member's record.
pub(super) fn member_pattern() -> String {
    format!("{PREFIX}member:*")
}

/// The pub/sub channel a member reads its routed messages from.
pub(super) fn channel(member: &str) -> String {
    format!("{PREFIX}to:{member}")
}

/// An id's presence record, as stored under [`agent_key`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AgentRecord {
    /// The member holding the agent's control connection.
    pub member: String,
    /// The registration's token: unique per registration, so only its holder refreshes it.
    pub token: String,
    /// The owner's verifier in hex, empty for a public agent (the scripts compare it).
    pub verifier: String,
    /// What a connect to the agent needs.
    pub view: AgentView,
    /// The agent's smoothed RTT to its member, microseconds (0 = unknown).
    pub rtt_us: u64,
    /// The holding member's RTT to Redis, microseconds: half of it is the last leg of an order
    /// routed to it.
    pub member_redis_rtt_us: u64,
    /// When it registered (Unix milliseconds).
    pub since_unix_ms: u64,
}

/// The verifier as the scripts compare it.
pub(super) fn verifier_word(v: Option<&Verifier>) -> String {
    v.map(|v| v.to_hex()).unwrap_or_default()
}

/// A member's record, as stored under [`member_key`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MemberRecord {
    /// The member's id.
    pub member: String,
    /// The address clients and agents reach it at (its control port).
    pub advertise: SocketAddr,
    /// Agents it holds.
    pub agents: u64,
    /// Its RTT to Redis, microseconds.
    pub redis_rtt_us: u64,
    /// When it started (Unix milliseconds).
    pub since_unix_ms: u64,
    /// Its version.
    pub version: String,
}

/// How a claim is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ClaimMode {
    /// A new registration that replaces one of the same owner elsewhere.
    Takeover,
    /// A new registration that waits while one of the same owner is online.
    Wait,
    /// The holder refreshing (or, after an outage, republishing) its own registration: it
    /// succeeds only while no other registration took the id.
    Keep,
}

impl ClaimMode {
    fn word(self) -> &'static str {
        match self {
            ClaimMode::Takeover => "new1",
            ClaimMode::Wait => "new0",
            ClaimMode::Keep => "keep",
        }
    }
}

/// What a claim script answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ClaimAnswer {
    /// The id is the claimant's; `replaced` names the registration it replaced elsewhere
    /// (member, token), if any.
    Ok { replaced: Option<(String, String)> },
    /// Another owner's agent holds it (on this member).
    Taken(String),
    /// Another instance of the same owner holds it (on this member) and the claim waits.
    Wait(String),
    /// Another owner went offline recently; its reservation lasts this many more milliseconds.
    Reserved(u64),
    /// Keep only: another registration holds the id now.
    Lost,
}

/// Claims an id: KEYS agent key, owner key; ARGV member, token, verifier word, mode, record,
/// presence TTL (ms), owner TTL (ms). Answers {'ok', replaced member, replaced token},
/// {'taken'|'wait'|'lost', member} or {'reserved', PTTL}.
const CLAIM: &str = r#"
local cur = redis.call('GET', KEYS[1])
local prev_member, prev_token = '', ''
if cur then
  local c = cjson.decode(cur)
  if c.token ~= ARGV[2] then
    if ARGV[4] == 'keep' then return {'lost', c.member} end
    if ARGV[3] == '' or c.verifier ~= ARGV[3] then return {'taken', c.member} end
    if ARGV[4] ~= 'new1' then return {'wait', c.member} end
    prev_member, prev_token = c.member, c.token
  end
else
  local owner = redis.call('GET', KEYS[2])
  if owner and owner ~= ARGV[3] then
    if ARGV[4] == 'keep' then return {'lost', ''} end
    return {'reserved', tostring(redis.call('PTTL', KEYS[2]))}
  end
end
redis.call('SET', KEYS[1], ARGV[5], 'PX', ARGV[6])
if ARGV[3] ~= '' then redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[7]) end
return {'ok', prev_member, prev_token}
"#;

/// Releases an id its registration held: KEYS agent key, owner key; ARGV token, grace (ms).
/// The owner key then lasts the grace period; a registration that has been replaced releases
/// nothing.
const RELEASE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local c = cjson.decode(cur)
if c.token ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if c.verifier ~= '' then
  if tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', KEYS[2], ARGV[2])
  else redis.call('DEL', KEYS[2]) end
end
return 1
"#;

/// The scripts, hashed once.
pub(super) struct Scripts {
    pub claim: Script,
    pub release: Script,
}

impl Scripts {
    pub fn new() -> Self {
        Scripts {
            claim: Script::new(CLAIM),
            release: Script::new(RELEASE),
        }
    }
}

/// One claim's arguments.
pub(super) struct ClaimArgs<'a> {
    pub id: &'a ServiceId,
    pub record: &'a AgentRecord,
    pub mode: ClaimMode,
    /// Milliseconds the presence lives unless refreshed.
    pub presence_ttl_ms: u64,
    /// Milliseconds the owner key lives unless refreshed: the presence's plus the id grace.
    pub owner_ttl_ms: u64,
}

impl ClaimArgs<'_> {
    /// The script invocation.
    pub fn invocation<'s>(&self, scripts: &'s Scripts) -> redis::ScriptInvocation<'s> {
        let record = serde_json::to_string(self.record).expect("a record serializes");
        let mut inv = scripts.claim.prepare_invoke();
        inv.key(agent_key(self.id))
            .key(owner_key(self.id))
            .arg(&self.record.member)
            .arg(&self.record.token)
            .arg(&self.record.verifier)
            .arg(self.mode.word())
            .arg(record)
            .arg(self.presence_ttl_ms)
            .arg(self.owner_ttl_ms);
        inv
    }
}

/// Reads a claim script's answer.
pub(super) fn claim_answer(words: &[String]) -> Result<ClaimAnswer, String> {
    let word = |i: usize| words.get(i).cloned().unwrap_or_default();
    Ok(match words.first().map(String::as_str) {
        Some("ok") => {
            let (member, token) = (word(1), word(2));
            ClaimAnswer::Ok {
                replaced: (!token.is_empty()).then_some((member, token)),
            }
        }
        Some("taken") => ClaimAnswer::Taken(word(1)),
        Some("wait") => ClaimAnswer::Wait(word(1)),
        Some("reserved") => {
            ClaimAnswer::Reserved(word(1).parse::<i64>().unwrap_or(0).max(0) as u64)
        }
        Some("lost") => ClaimAnswer::Lost,
        _ => {
            return Err(format!(
                "unexpected answer from the claim script: {words:?}"
            ));
        }
    })
}
