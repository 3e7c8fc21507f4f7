//! A topic streamed as Server-Sent Events in a consumer group (issue #17):
//! `GET /api/v1/groups/{group}/topics/{topic}/stream?from=earliest|latest`.
//!
//! The stream is one member of the group, through the core's heartbeat membership (the one
//! the native consumers use): the group assigns it partitions of the topic, and streams of
//! the same group share the partitions. It starts each partition at the group's committed
//! offset (`from` applies to partitions with none), and commits what it has sent before each
//! fetch, so a reconnecting client resumes where the group left off (at least once: records
//! sent after the last commit come again). The member heartbeats between fetches; closing
//! the stream commits and leaves the group.
//!
//! Backpressure: the next fetch (at most 1 MiB for all its partitions) runs only once the
//! previous events were taken by the connection. A reader that stops reading stops
//! heartbeating too: after the session timeout the group gives its partitions to the other
//! members (it is dropped, never buffered for).

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::Instant;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::core::{
    Broker, Committed, FetchQuery, GroupAdminError, GroupError, Heartbeat, Isolation,
    MemberAssignment, OffsetEntry, OffsetSpec, PartitionQuery, Session, TopicQuery,
};
use crate::frontend::http::error::{ApiError, ErrorBody, PathParams, QueryParams};
use crate::frontend::http::stream::{StreamItem, StreamReader, STREAM_FETCH_BYTES_MAX};
use crate::frontend::http::{Caller, Http, Shared};

/// Longest one fetch waits for records (shorter when the next heartbeat is due sooner).
const FETCH_WAIT: Duration = Duration::from_secs(5);

/// The client id the group shows for HTTP members.
const CLIENT_ID: &str = "wharf-http";

/// The routes of this module.
pub fn routes() -> OpenApiRouter<Arc<Http>> {
    OpenApiRouter::new().routes(routes!(group_stream))
}

/// The query of a group stream.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GroupStreamQuery {
    /// Where partitions without a committed offset start: `earliest` or `latest` (the
    /// default).
    pub from: Option<String>,
}

/// Streams a topic as Server-Sent Events as a member of a consumer group.
///
/// Each `record` event's `id` is `PARTITION-OFFSET` and its data the StreamRecordDoc fields
/// plus `partition`. The group's committed offsets are where it starts, and what it commits
/// as it sends; closing the stream leaves the group.
#[utoipa::path(
    get,
    path = "/groups/{group}/topics/{topic}/stream",
    tag = "groups",
    params(
        ("group" = String, Path, description = "The group id"),
        ("topic" = String, Path, description = "The topic's name"),
        GroupStreamQuery,
    ),
    responses(
        (status = 200, description = "The event stream", content_type = "text/event-stream", body = String),
        (status = 400, description = "A bad group id or `from`", body = ErrorBody),
        (status = 404, description = "Unknown topic", body = ErrorBody),
        (status = 503, description = "Recovering", body = ErrorBody),
    )
)]
pub async fn group_stream(
    State(http): Shared,
    caller: Caller,
    PathParams((group_id, topic)): PathParams<(String, String)>,
    QueryParams(query): QueryParams<GroupStreamQuery>,
) -> Result<Response, ApiError> {
    let member = Member::join(&http, &caller, group_id, topic, query.from.as_deref())?;
    let events = futures_util::stream::unfold(member, |mut member| async move {
        let event = match member.next_item().await? {
            GroupItem::Record {
                partition,
                offset,
                data,
            } if data.get("skipped").is_some() => Event::default()
                .id(format!("{partition}-{offset}"))
                .event("skipped")
                .data(data.to_string()),
            GroupItem::Record {
                partition,
                offset,
                data,
            } => Event::default()
                .id(format!("{partition}-{offset}"))
                .event("record")
                .data(data.to_string()),
            GroupItem::Failed(error) => Event::default().event("error").data(error.to_string()),
        };
        Some((Ok::<Event, Infallible>(event), member))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(FETCH_WAIT))
        .into_response())
}

fn heartbeat(group_id: &str, member_id: &str, generation: i32, topic: &str) -> Heartbeat {
    Heartbeat {
        group_id: group_id.to_string(),
        member_id: member_id.to_string(),
        generation,
        client_id: CLIENT_ID.to_string(),
        session_timeout_ms: 0,
        topics: vec![topic.to_string()],
        assignor: String::new(),
        owned: None,
        joins_with_own_id: false,
    }
}

/// What a group stream sends next.
#[derive(Debug)]
pub(super) enum GroupItem {
    /// A record of `partition` at `offset`: the record JSON with `partition`.
    Record {
        /// Its partition.
        partition: u32,
        /// Its offset.
        offset: i64,
        /// `{"partition", "offset", "timestamp_ms", "key", "value", "headers"}`.
        data: serde_json::Value,
    },
    /// The stream cannot go on: `{"error", "message"}`.
    Failed(serde_json::Value),
}

/// One group stream: a member of the group and its partitions' readers.
pub(super) struct Member {
    broker: Arc<Broker>,
    session: Arc<Session>,
    group_id: String,
    topic: String,
    member_id: String,
    /// The generation whose assignment `readers` applies.
    generation: i32,
    heartbeat_interval: Duration,
    next_heartbeat: Instant,
    /// Where a partition with no committed offset starts.
    reset: OffsetSpec,
    /// The assigned partitions' readers; their positions are what was sent.
    readers: BTreeMap<u32, StreamReader>,
    /// The last offset committed per partition.
    committed: BTreeMap<u32, i64>,
    /// Records read, not yet sent: (partition, offset, record JSON with `partition`).
    pending: VecDeque<(u32, i64, serde_json::Value)>,
    /// The record last handed out, until the next is asked for (then it was sent): not
    /// committed by the drop, which cannot know whether it reached the client.
    in_flight: Option<(u32, i64)>,
    shutdown: watch::Receiver<bool>,
    /// An error event was sent: the stream ends.
    done: bool,
}

impl Member {
    /// Joins `group_id` as a member subscribed to `topic`; partitions without a committed
    /// offset start at `from` (`earliest` or `latest`, the default).
    ///
    /// # Errors
    /// 503 while recovering, 404 for an unknown topic, 400 for a bad `from` or group id.
    pub(super) fn join(
        http: &Http,
        caller: &Caller,
        group_id: String,
        topic: String,
        from: Option<&str>,
    ) -> Result<Member, ApiError> {
        let broker = http.broker()?.clone();
        let reset = match from {
            None | Some("latest") => OffsetSpec::LastStable,
            Some("earliest") => OffsetSpec::Earliest,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "from={other:?}: earliest or latest"
                )))
            }
        };
        // 404 for an unknown topic before joining.
        broker.list_offset(caller, &topic, 0, OffsetSpec::Earliest)?;
        let session = Arc::new(caller.like());
        let joined = broker
            .heartbeat(&session, &heartbeat(&group_id, "", 0, &topic))
            .map_err(|error| ApiError::from(GroupAdminError::from(error)))?;
        let mut member = Member {
            broker,
            session,
            group_id,
            topic,
            member_id: joined.member_id,
            generation: joined.generation,
            heartbeat_interval: Duration::from_millis(u64::from(
                joined.heartbeat_interval_ms.max(100),
            )),
            next_heartbeat: Instant::now(),
            reset,
            readers: BTreeMap::new(),
            committed: BTreeMap::new(),
            pending: VecDeque::new(),
            in_flight: None,
            shutdown: http.shutdown.clone(),
            done: false,
        };
        member.apply(&joined.assignment);
        member.next_heartbeat = Instant::now() + member.heartbeat_interval;
        Ok(member)
    }

    /// Takes the partitions of `assignment`: new ones start at the committed offset (or
    /// the reset point), released ones are dropped (their positions were committed).
    fn apply(&mut self, assignment: &MemberAssignment) {
        let assigned: Vec<u32> = assignment.get(&self.topic).cloned().unwrap_or_default();
        self.readers
            .retain(|partition, _| assigned.contains(partition));
        self.committed
            .retain(|partition, _| assigned.contains(partition));
        let wanted = vec![(self.topic.clone(), assigned.clone())];
        let committed: BTreeMap<u32, Option<Committed>> = self
            .broker
            .fetch_offsets(&self.session, &self.group_id, Some(wanted))
            .unwrap_or_default()
            .into_iter()
            .flat_map(|(_, partitions)| partitions)
            .collect();
        for partition in assigned {
            if self.readers.contains_key(&partition) {
                continue;
            }
            let start = match committed.get(&partition).cloned().flatten() {
                Some(committed) => committed.offset,
                None => self
                    .broker
                    .list_offset(&self.session, &self.topic, partition, self.reset)
                    .ok()
                    .flatten()
                    .unwrap_or(0),
            };
            self.committed.insert(partition, start);
            self.readers.insert(
                partition,
                StreamReader::at(
                    self.broker.clone(),
                    self.session.clone(),
                    self.topic.clone(),
                    partition,
                    start,
                    self.shutdown.clone(),
                ),
            );
        }
    }

    /// Commits the positions of what was sent, where they moved. A refusal (the group
    /// moved on) is left to the next heartbeat, which brings the new assignment.
    async fn commit(&mut self) {
        let entries: Vec<OffsetEntry> = self
            .readers
            .iter()
            .filter(|(partition, reader)| self.committed.get(partition) != Some(&reader.position()))
            .map(|(partition, reader)| OffsetEntry {
                topic: self.topic.clone(),
                partition: *partition,
                committed: Committed {
                    offset: reader.position(),
                    metadata: None,
                },
            })
            .collect();
        if entries.is_empty() {
            return;
        }
        let outcome = self
            .broker
            .commit_offsets(
                &self.session,
                &self.group_id,
                &self.member_id,
                self.generation,
                entries.clone(),
            )
            .await;
        if let Ok(outcomes) = outcome {
            for (entry, outcome) in entries.iter().zip(outcomes) {
                if outcome.is_ok() {
                    self.committed
                        .insert(entry.partition, entry.committed.offset);
                }
            }
        }
    }

    /// A heartbeat; the assignment it brings is applied.
    fn heartbeat(&mut self) -> Result<(), GroupError> {
        let state = self.broker.heartbeat(
            &self.session,
            &heartbeat(
                &self.group_id,
                &self.member_id,
                self.generation,
                &self.topic,
            ),
        )?;
        self.generation = state.generation;
        self.apply(&state.assignment);
        self.next_heartbeat = Instant::now() + self.heartbeat_interval;
        Ok(())
    }

    fn failed(&mut self, error: ApiError) -> Option<GroupItem> {
        self.done = true;
        Some(GroupItem::Failed(
            serde_json::json!({"error": error.kind, "message": error.message}),
        ))
    }

    /// The next record, or an error before the end; `None` ends the stream. Cancel-safe:
    /// a fetch or commit dropped half way loses nothing (positions move only when records
    /// are read, and an unfinished commit is made again).
    pub(super) async fn next_item(&mut self) -> Option<GroupItem> {
        // Asked for the next: the one handed out before was sent.
        self.in_flight = None;
        loop {
            if let Some((partition, offset, data)) = self.pending.pop_front() {
                self.in_flight = Some((partition, offset));
                return Some(GroupItem::Record {
                    partition,
                    offset,
                    data,
                });
            }
            if self.done || *self.shutdown.borrow() {
                return None;
            }
            // Everything read so far was taken by the connection: commit it.
            self.commit().await;
            if Instant::now() >= self.next_heartbeat {
                if let Err(error) = self.heartbeat() {
                    return self.failed(ApiError::from(GroupAdminError::from(error)));
                }
            }
            let wait = self
                .next_heartbeat
                .saturating_duration_since(Instant::now())
                .min(FETCH_WAIT);
            let mut shutdown = self.shutdown.clone();
            if self.readers.is_empty() {
                // No partition for this member (more members than partitions): wait for
                // the next heartbeat.
                tokio::select! {
                    () = tokio::time::sleep(wait) => continue,
                    _ = shutdown.changed() => return None,
                }
            }
            let query = FetchQuery {
                max_wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
                min_bytes: 1,
                max_bytes: STREAM_FETCH_BYTES_MAX,
                isolation: Isolation::ReadCommitted,
                topics: vec![TopicQuery {
                    topic: self.topic.clone(),
                    partitions: self
                        .readers
                        .iter()
                        .map(|(partition, reader)| PartitionQuery {
                            partition: *partition,
                            fetch_offset: reader.position(),
                            partition_max_bytes: STREAM_FETCH_BYTES_MAX,
                            current_leader_epoch: -1,
                        })
                        .collect(),
                }],
            };
            let fetched = tokio::select! {
                fetched = self.broker.fetch(&self.session, &query) => fetched,
                _ = shutdown.changed() => return None,
            };
            for topic in fetched {
                for partition in topic.partitions {
                    if let Some(error) = partition.error {
                        return self.failed(ApiError::from(error));
                    }
                    let Some(reader) = self.readers.get_mut(&partition.partition) else {
                        continue;
                    };
                    reader.take_records(partition.records, &partition.aborted);
                    let number = partition.partition;
                    for item in reader.take_pending() {
                        match item {
                            StreamItem::Record { offset, mut data } => {
                                data["partition"] = number.into();
                                self.pending.push_back((number, offset, data));
                            }
                            // Sent as a `skipped` event; once sent, the group's position
                            // moves past it like past a record.
                            StreamItem::Skipped(mut data) => {
                                let last = data["last_offset"].as_i64().unwrap_or_default();
                                data["partition"] = number.into();
                                self.pending.push_back((number, last, data));
                            }
                            StreamItem::Failed(_) => {}
                        }
                    }
                }
            }
        }
    }
}

impl Drop for Member {
    /// The stream ended (the client went away, or shutdown): commit what was sent and leave
    /// the group, so its partitions go to the other members at once.
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let broker = self.broker.clone();
        let session = self.session.clone();
        let group_id = self.group_id.clone();
        let member_id = self.member_id.clone();
        let generation = self.generation;
        // What was sent: up to a partition's record in flight or first unsent one, else its
        // position.
        let entries: Vec<OffsetEntry> = self
            .readers
            .iter()
            .map(|(partition, reader)| {
                let unsent = self
                    .in_flight
                    .filter(|(number, _)| number == partition)
                    .map(|(_, offset)| offset)
                    .or_else(|| {
                        self.pending
                            .iter()
                            .find(|(number, ..)| number == partition)
                            .map(|(_, offset, _)| *offset)
                    });
                (*partition, unsent.unwrap_or(reader.position()))
            })
            .filter(|(partition, sent)| self.committed.get(partition) != Some(sent))
            .map(|(partition, sent)| OffsetEntry {
                topic: self.topic.clone(),
                partition,
                committed: Committed {
                    offset: sent,
                    metadata: None,
                },
            })
            .collect();
        runtime.spawn(async move {
            if !entries.is_empty() {
                let _ = broker
                    .commit_offsets(&session, &group_id, &member_id, generation, entries)
                    .await;
            }
            let _ = broker.leave_group(&session, &group_id, &member_id);
        });
    }
}
