//! `bems replay`: puts the archived events of a time window back on the
//! cell's bus, through the same rules, from the bus's archive.
//!
//! Replayed events are the same events (same `eventId`): the stage
//! processors skip what they already handled (FIFO deduplication within
//! five minutes, the optional idempotency store beyond) and the Timestream
//! writer's versions make a rewrite a no-op, so a replay fills gaps without
//! doubling history. Replays are slow to start on AWS (minutes) and run at
//! most ten at a time per account.
//!
//! LocalStack 2026.3 cannot replay: its `StartReplay` fails with an internal
//! error (HTTP 500, a Python `replace()` called without arguments) after
//! recording the replay, and the SDK's retry then hears that the replay
//! already exists; nothing is replayed. On LocalStack the command refuses
//! with that reason instead.

use std::time::Duration;

use aws_sdk_eventbridge::primitives::DateTime;
use aws_sdk_eventbridge::types::{ReplayDestination, ReplayState};
use bems_core::routing::CellSpec;
use serde::Serialize;

/// A failed replay.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The emulator cannot replay.
    #[error(
        "replay: {0} is LocalStack, which cannot replay EventBridge archives (2026.3: StartReplay fails with an internal error and replays nothing); run replay against an AWS cell"
    )]
    Emulator(String),
    /// The window is empty or reversed.
    #[error("replay: --from must be before --to (got {from} .. {to})")]
    Window {
        /// Start.
        from: String,
        /// End.
        to: String,
    },
    /// An EventBridge call failed.
    #[error("replay: {0}")]
    Call(#[from] crate::CallError),
    /// The replay's destination could not be built.
    #[error("replay: destination: {0}")]
    Destination(#[from] aws_sdk_eventbridge::error::BuildError),
    /// The replay ended other than completed.
    #[error("replay: {name} ended {state}: {}", reason.as_deref().unwrap_or("no reason given"))]
    Ended {
        /// The replay.
        name: String,
        /// How it ended (`FAILED`, `CANCELLED`).
        state: String,
        /// EventBridge's reason.
        reason: Option<String>,
    },
}

/// A replay and where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Replay {
    /// Its name.
    pub name: String,
    /// Its ARN.
    pub arn: String,
    /// `STARTING`, `RUNNING`, `COMPLETED`, ...
    pub state: String,
    /// The reason EventBridge gives for the state, if any.
    pub reason: Option<String>,
}

/// The ARN of `spec`'s archive.
pub fn archive_arn(spec: &CellSpec) -> String {
    format!("arn:aws:events:{}:{}:archive/{}", spec.region(), spec.account_id(), spec.archive_name())
}

/// Starts replaying the events archived between `from` and `to` (RFC 3339)
/// to `spec`'s bus; with `wait`, polls until the replay ends. `localstack`
/// is the endpoint when it is LocalStack ([`crate::is_localstack`]), which
/// is refused.
pub async fn replay(
    events: &aws_sdk_eventbridge::Client,
    spec: &CellSpec,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
    localstack: Option<&str>,
    wait: Option<Duration>,
) -> Result<Replay, ReplayError> {
    if let Some(url) = localstack {
        return Err(ReplayError::Emulator(url.to_owned()));
    }
    if from >= to {
        return Err(ReplayError::Window { from: from.to_rfc3339(), to: to.to_rfc3339() });
    }
    let name = format!("{}-{}", spec.archive_name(), from.timestamp());
    let destination = ReplayDestination::builder().arn(spec.bus_arn()).build()?;
    let started = events
        .start_replay()
        .replay_name(&name)
        .description(format!("bems replay {} .. {}", from.to_rfc3339(), to.to_rfc3339()))
        .event_source_arn(archive_arn(spec))
        .event_start_time(DateTime::from_secs(from.timestamp()))
        .event_end_time(DateTime::from_secs(to.timestamp()))
        .destination(destination)
        .send()
        .await
        .map_err(|e| crate::CallError::new(format!("start replay {name}"), e))?;
    let mut replay = Replay {
        name: name.clone(),
        arn: started.replay_arn().unwrap_or_default().to_owned(),
        state: started.state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
        reason: started.state_reason().map(str::to_owned),
    };
    let Some(limit) = wait else { return Ok(replay) };
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let found = events
            .describe_replay()
            .replay_name(&name)
            .send()
            .await
            .map_err(|e| crate::CallError::new(format!("describe replay {name}"), e))?;
        replay.state = found.state().map(|s| s.as_str().to_owned()).unwrap_or_default();
        replay.reason = found.state_reason().map(str::to_owned);
        match found.state() {
            Some(ReplayState::Completed) => return Ok(replay),
            Some(ReplayState::Failed | ReplayState::Cancelled) => {
                return Err(ReplayError::Ended { name, state: replay.state, reason: replay.reason });
            }
            _ if tokio::time::Instant::now() >= deadline => return Ok(replay),
            _ => tokio::time::sleep(Duration::from_secs(5)).await,
        }
    }
}
