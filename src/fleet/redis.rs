//! The fleet's Redis layout and commands, with their replies parsed into plain
//! values. The stream `<stream>` holds one entry per purge (field `purge`: an
//! [`Admitted`] as JSON); the hash `<stream>:nodes` holds each node's record (its
//! position and heartbeat); `<stream>:rid:<token>:<request id>` holds the stream id
//! a request id was appended under, for the request-id window.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Value};

use crate::purge::Admitted;

use super::StreamId;

/// The script that appends a purge unless its request id was appended before: both
/// in one step, so two nodes given the same request id append it once.
const APPEND: &str = r"
local first = redis.call('GET', KEYS[2])
if first then return {0, first} end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'purge', ARGV[2])
redis.call('SET', KEYS[2], id, 'EX', ARGV[3])
return {1, id}
";

/// A node's record in `<stream>:nodes`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NodeRecord {
    pub tier: String,
    /// The last stream entry applied, in stream order.
    pub applied: String,
    /// Wall-clock milliseconds of the last heartbeat.
    pub beat_ms: u64,
    /// The node's own `down_after`, in milliseconds.
    pub down_after_ms: u64,
    pub partitioned: bool,
}

/// What `XINFO STREAM` says about the stream's ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamInfo {
    pub length: u64,
    pub last_generated: StreamId,
    /// Entries ever appended (trimmed ones included).
    pub entries_added: u64,
    pub first: Option<StreamId>,
}

impl StreamInfo {
    /// Were entries after `pos` trimmed away before they could be read? Trimming
    /// removes the oldest entries, so that is when the oldest left is past `pos`
    /// (from the very start, 0-0: when anything was trimmed). Conservative: a node
    /// whose own last entry was the last one trimmed counts as having a gap too.
    pub fn trimmed_after(&self, pos: StreamId) -> bool {
        match self.first {
            Some(first) if pos == StreamId::default() => {
                first > pos && self.entries_added > self.length
            }
            Some(first) => first > pos,
            // Empty: whatever was appended after `pos` is gone.
            None => self.last_generated > pos,
        }
    }
}

pub struct Keys {
    pub stream: String,
    pub nodes: String,
    rid_prefix: String,
}

impl Keys {
    pub fn new(stream: &str) -> Keys {
        Keys {
            stream: stream.to_string(),
            nodes: format!("{stream}:nodes"),
            rid_prefix: format!("{stream}:rid:"),
        }
    }

    fn request_id(&self, token: &str, id: &str) -> String {
        format!("{}{token}:{id}", self.rid_prefix)
    }
}

/// Appends a purge; returns its stream id, and whether this call appended it
/// (false: the request id was appended before, under the id returned).
pub async fn append(
    conn: &mut ConnectionManager,
    keys: &Keys,
    admitted: &Admitted,
    retention: u64,
    window: Duration,
) -> redis::RedisResult<(StreamId, bool)> {
    let entry = serde_json::to_string(admitted).unwrap_or_default();
    let rid = admitted.purge.request_id.as_deref().unwrap_or_default();
    let (appended, id): (i64, String) = redis::Script::new(APPEND)
        .key(&keys.stream)
        .key(keys.request_id(&admitted.token, rid))
        .arg(retention)
        .arg(entry)
        .arg(window.as_secs().max(1))
        .invoke_async(conn)
        .await?;
    let id = id
        .parse()
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::Parse, "stream id", id.clone())))?;
    Ok((id, appended == 1))
}

/// Up to `count` entries after `after`, waiting at most `block` for one.
/// Entries whose purge does not parse come back as `None` (skipped, not applied).
pub async fn read(
    conn: &mut ConnectionManager,
    keys: &Keys,
    after: StreamId,
    count: usize,
    block: Duration,
) -> redis::RedisResult<Vec<(StreamId, Option<Admitted>)>> {
    let reply: Value = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(count)
        .arg("BLOCK")
        .arg(u64::try_from(block.as_millis()).unwrap_or(u64::MAX).max(1))
        .arg("STREAMS")
        .arg(&keys.stream)
        .arg(after.to_string())
        .query_async(conn)
        .await?;
    Ok(parse_read(reply))
}

fn parse_read(reply: Value) -> Vec<(StreamId, Option<Admitted>)> {
    let mut out = Vec::new();
    let streams = match reply {
        Value::Array(streams) => streams,
        // RESP3 answers with a map of stream → entries.
        Value::Map(pairs) => pairs
            .into_iter()
            .map(|(k, v)| Value::Array(vec![k, v]))
            .collect(),
        _ => return out,
    };
    for stream in streams {
        let Value::Array(mut parts) = stream else {
            continue;
        };
        let Some(Value::Array(entries)) = parts.pop() else {
            continue;
        };
        for entry in entries {
            let Value::Array(mut entry) = entry else {
                continue;
            };
            if entry.len() != 2 {
                continue;
            }
            let fields = entry.pop();
            let Some(id) = entry
                .pop()
                .and_then(|v| text(&v))
                .and_then(|t| t.parse().ok())
            else {
                continue;
            };
            let purge = match fields {
                Some(Value::Array(fields)) => fields
                    .chunks(2)
                    .find(|kv| kv.first().and_then(text).as_deref() == Some("purge"))
                    .and_then(|kv| kv.get(1).and_then(text))
                    .and_then(|json| serde_json::from_str(&json).ok()),
                _ => None,
            };
            out.push((id, purge));
        }
    }
    out
}

/// The stream's ends; `None` when it does not exist.
pub async fn info(
    conn: &mut ConnectionManager,
    keys: &Keys,
) -> redis::RedisResult<Option<StreamInfo>> {
    // One round trip: a missing stream is XINFO's "no such key" error.
    match redis::cmd("XINFO")
        .arg("STREAM")
        .arg(&keys.stream)
        .query_async::<Value>(conn)
        .await
    {
        Ok(reply) => Ok(Some(parse_info(reply))),
        Err(e) if e.to_string().contains("no such key") => Ok(None),
        Err(e) => Err(e),
    }
}

fn parse_info(reply: Value) -> StreamInfo {
    let pairs: Vec<(Value, Value)> = match reply {
        Value::Map(pairs) => pairs,
        Value::Array(flat) => {
            let mut pairs = Vec::new();
            let mut it = flat.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                pairs.push((k, v));
            }
            pairs
        }
        _ => Vec::new(),
    };
    let mut info = StreamInfo::default();
    for (k, v) in pairs {
        let id = || text(&v).and_then(|t| t.parse().ok()).unwrap_or_default();
        match text(&k).as_deref() {
            Some("length") => info.length = u64::try_from(int(&v)).unwrap_or(0),
            Some("last-generated-id") => info.last_generated = id(),
            Some("entries-added") => info.entries_added = u64::try_from(int(&v)).unwrap_or(0),
            Some("first-entry") => {
                if let Value::Array(entry) = &v {
                    info.first = entry.first().and_then(text).and_then(|t| t.parse().ok());
                }
            }
            _ => {}
        }
    }
    info
}

/// How many entries follow `after` (counting at most `cap`), and the first of them.
pub async fn entries_after(
    conn: &mut ConnectionManager,
    keys: &Keys,
    after: StreamId,
    cap: usize,
) -> redis::RedisResult<(usize, Option<StreamId>)> {
    let reply: Value = redis::cmd("XRANGE")
        .arg(&keys.stream)
        .arg(format!("({after}"))
        .arg("+")
        .arg("COUNT")
        .arg(cap)
        .query_async(conn)
        .await?;
    Ok(match reply {
        Value::Array(entries) => {
            let first = entries.first().and_then(|e| match e {
                Value::Array(parts) => parts.first().and_then(text)?.parse().ok(),
                _ => None,
            });
            (entries.len(), first)
        }
        _ => (0, None),
    })
}

/// How long the oldest entry after `after` has waited, by its id's clock (0 when
/// there is none): a node's lag.
pub async fn lag_ms(
    conn: &mut ConnectionManager,
    keys: &Keys,
    after: StreamId,
    now_ms: u64,
) -> redis::RedisResult<(usize, u64)> {
    let (count, first) = entries_after(conn, keys, after, 10_000).await?;
    Ok((count, first.map_or(0, |f| now_ms.saturating_sub(f.ms))))
}

pub async fn record_node(
    conn: &mut ConnectionManager,
    keys: &Keys,
    node: &str,
    record: &NodeRecord,
) -> redis::RedisResult<()> {
    let json = serde_json::to_string(record).unwrap_or_default();
    conn.hset::<_, _, _, ()>(&keys.nodes, node, json).await
}

pub async fn forget_node(
    conn: &mut ConnectionManager,
    keys: &Keys,
    node: &str,
) -> redis::RedisResult<()> {
    conn.hdel::<_, _, ()>(&keys.nodes, node).await
}

pub async fn nodes(
    conn: &mut ConnectionManager,
    keys: &Keys,
) -> redis::RedisResult<BTreeMap<String, NodeRecord>> {
    let all: BTreeMap<String, String> = conn.hgetall(&keys.nodes).await?;
    Ok(all
        .into_iter()
        .filter_map(|(name, json)| Some((name, serde_json::from_str(&json).ok()?)))
        .collect())
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        other => text(other).and_then(|t| t.parse().ok()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn read_replies_parse_and_skip_what_is_malformed() {
        let good = serde_json::json!({
            "purge": {"tags": ["a"]}, "keys": [], "token": "ci", "via": "api", "client": "127.0.0.1"
        })
        .to_string();
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("s"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("5-1"),
                    Value::Array(vec![bulk("purge"), bulk(&good)]),
                ]),
                Value::Array(vec![
                    bulk("6-0"),
                    Value::Array(vec![bulk("purge"), bulk("{nope")]),
                ]),
                Value::Array(vec![bulk("not-an-id"), Value::Array(vec![])]),
            ]),
        ])]);
        let entries = parse_read(reply);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].0, StreamId { ms: 5, seq: 1 });
        assert_eq!(
            entries[0].1.as_ref().map(|a| a.purge.tags.clone()),
            Some(vec!["a".to_string()])
        );
        assert_eq!(entries[1], (StreamId { ms: 6, seq: 0 }, None));
        assert!(parse_read(Value::Nil).is_empty());
    }

    #[test]
    fn stream_info_reads_its_ends() {
        let reply = Value::Array(vec![
            bulk("length"),
            Value::Int(3),
            bulk("last-generated-id"),
            bulk("9-2"),
            bulk("entries-added"),
            Value::Int(7),
            bulk("first-entry"),
            Value::Array(vec![bulk("5-0"), Value::Array(vec![])]),
        ]);
        let info = parse_info(reply);
        assert_eq!(info.length, 3);
        assert_eq!(info.last_generated, StreamId { ms: 9, seq: 2 });
        assert_eq!(info.entries_added, 7);
        assert_eq!(info.first, Some(StreamId { ms: 5, seq: 0 }));
    }

    #[test]
    fn a_gap_is_entries_trimmed_after_the_position() {
        let id = |ms| StreamId { ms, seq: 0 };
        let info = |first: Option<u64>, added, length| StreamInfo {
            length,
            last_generated: id(9),
            entries_added: added,
            first: first.map(id),
        };
        // (stream, position, gap?)
        let cases = [
            (info(Some(5), 5, 5), id(0), false), // nothing trimmed yet
            (info(Some(5), 7, 5), id(0), true),  // from the start, two trimmed
            (info(Some(5), 7, 5), id(4), true),  // 4 (or what followed) trimmed
            (info(Some(5), 7, 5), id(5), false), // reading from the oldest left
            (info(Some(5), 7, 5), id(8), false),
            (info(None, 7, 0), id(9), false), // all read, then all trimmed
            (info(None, 7, 0), id(8), true),  // 9 was trimmed unread
        ];
        for (i, (stream, pos, gap)) in cases.iter().enumerate() {
            assert_eq!(stream.trimmed_after(*pos), *gap, "case {i}");
        }
    }
}
