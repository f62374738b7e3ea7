//! Stages, statuses and the transition table of an invoice's lifecycle.
//!
//! An invoice passes four stages in order: ingestion, reconciliation,
//! authorization, posting. An event with `stage: S` asks stage `S` to act on
//! the invoice; its `status` is what the invoice has become on the way in.
//!
//! | status       | event's stage    | may follow            |
//! |--------------|------------------|-----------------------|
//! | `submitted`  | ingestion        | nothing (first event) |
//! | `ingested`   | reconciliation   | `submitted`           |
//! | `reconciled` | authorization    | `ingested`            |
//! | `authorized` | posting          | `reconciled`          |
//! | `posted`     | posting          | `authorized`          |
//! | `rejected`   | the rejecting stage | any non-terminal   |
//!
//! `posted` and `rejected` are terminal. Every other move is refused with a
//! [`TransitionError`] that says whether the event went backwards, skipped a
//! stage, left a terminal status or repeated the status it came from, so that
//! an out-of-order or forged event is reported as such instead of being
//! silently applied.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One of the four processing stages, in pipeline order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// The invoice is captured and checked for completeness.
    Ingestion,
    /// The invoice is matched against purchase orders and receipts.
    Reconciliation,
    /// The invoice is approved for payment.
    Authorization,
    /// The invoice is posted to the ledger.
    Posting,
}

impl Stage {
    /// All stages in pipeline order.
    pub const ALL: [Stage; 4] = [Stage::Ingestion, Stage::Reconciliation, Stage::Authorization, Stage::Posting];

    /// The wire name, as used in JSON, API paths and resource names.
    pub const fn as_str(self) -> &'static str {
        match self {
            Stage::Ingestion => "ingestion",
            Stage::Reconciliation => "reconciliation",
            Stage::Authorization => "authorization",
            Stage::Posting => "posting",
        }
    }

    /// Position in the pipeline, from 1 (ingestion) to 4 (posting).
    pub const fn ordinal(self) -> u8 {
        match self {
            Stage::Ingestion => 1,
            Stage::Reconciliation => 2,
            Stage::Authorization => 3,
            Stage::Posting => 4,
        }
    }

    /// The stage after this one, if any.
    pub const fn next(self) -> Option<Stage> {
        match self {
            Stage::Ingestion => Some(Stage::Reconciliation),
            Stage::Reconciliation => Some(Stage::Authorization),
            Stage::Authorization => Some(Stage::Posting),
            Stage::Posting => None,
        }
    }

    /// Parses a wire name.
    pub fn from_wire(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an invoice is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Sent by the producer; waits for ingestion.
    Submitted,
    /// Ingested; waits for reconciliation.
    Ingested,
    /// Reconciled; waits for authorization.
    Reconciled,
    /// Authorized; waits for posting.
    Authorized,
    /// Posted to the ledger. Terminal.
    Posted,
    /// Refused by a stage. Terminal.
    Rejected,
}

impl Status {
    /// All statuses, in lifecycle order (`rejected` last).
    pub const ALL: [Status; 6] =
        [Status::Submitted, Status::Ingested, Status::Reconciled, Status::Authorized, Status::Posted, Status::Rejected];

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Submitted => "submitted",
            Status::Ingested => "ingested",
            Status::Reconciled => "reconciled",
            Status::Authorized => "authorized",
            Status::Posted => "posted",
            Status::Rejected => "rejected",
        }
    }

    /// Parses a wire name.
    pub fn from_wire(name: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether no further transition is allowed.
    pub const fn is_terminal(self) -> bool {
        matches!(self, Status::Posted | Status::Rejected)
    }

    /// The stage an invoice in this status is handed to, which is the stage
    /// that acts on it next. `None` for terminal statuses.
    pub const fn acting_stage(self) -> Option<Stage> {
        match self {
            Status::Submitted => Some(Stage::Ingestion),
            Status::Ingested => Some(Stage::Reconciliation),
            Status::Reconciled => Some(Stage::Authorization),
            Status::Authorized => Some(Stage::Posting),
            Status::Posted | Status::Rejected => None,
        }
    }

    /// The stage whose events carry this status, for every status but
    /// `rejected` (which any stage may carry).
    pub const fn event_stage(self) -> Option<Stage> {
        match self {
            Status::Posted => Some(Stage::Posting),
            Status::Rejected => None,
            other => other.acting_stage(),
        }
    }

    /// Lifecycle position used to tell "backwards" from "skips a stage".
    const fn rank(self) -> u8 {
        match self {
            Status::Submitted => 1,
            Status::Ingested => 2,
            Status::Reconciled => 3,
            Status::Authorized => 4,
            Status::Posted => 5,
            Status::Rejected => 6,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The allowed transitions: `(previous status, new status, stage the event
/// names)`. The stage is the one the invoice is handed to, or for a terminal
/// status the one that decided it. `None` as previous status is an invoice's
/// first event. This table is the single source of truth: the validator, the
/// JSON Schemas and the docs above are all derived from or checked against it.
pub const TRANSITIONS: &[(Option<Status>, Status, Stage)] = &[
    (None, Status::Submitted, Stage::Ingestion),
    (Some(Status::Submitted), Status::Ingested, Stage::Reconciliation),
    (Some(Status::Submitted), Status::Rejected, Stage::Ingestion),
    (Some(Status::Ingested), Status::Reconciled, Stage::Authorization),
    (Some(Status::Ingested), Status::Rejected, Stage::Reconciliation),
    (Some(Status::Reconciled), Status::Authorized, Stage::Posting),
    (Some(Status::Reconciled), Status::Rejected, Stage::Authorization),
    (Some(Status::Authorized), Status::Posted, Stage::Posting),
    (Some(Status::Authorized), Status::Rejected, Stage::Posting),
];

/// Why a status change is not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The first event of an invoice must be `submitted`.
    #[error("an invoice's first event must have status 'submitted', not '{to}'")]
    InvalidInitial {
        /// The status the event claims.
        to: Status,
    },
    /// The previous status is terminal.
    #[error("'{from}' is terminal: no event may follow it (got '{to}')")]
    FromTerminal {
        /// The terminal status.
        from: Status,
        /// The status the event claims.
        to: Status,
    },
    /// The event moves the invoice to an earlier point of its lifecycle.
    #[error("'{from}' -> '{to}' moves the invoice backwards")]
    Backwards {
        /// The status the invoice is in.
        from: Status,
        /// The earlier status the event claims.
        to: Status,
    },
    /// The event repeats the status the invoice is already in.
    #[error("'{from}' -> '{to}' repeats the current status")]
    Repeated {
        /// The status the invoice is in, and the event claims again.
        from: Status,
        /// Same as `from`.
        to: Status,
    },
    /// The event jumps over at least one stage.
    #[error("'{from}' -> '{to}' skips a stage (next is '{expected}')")]
    SkipsStage {
        /// The status the invoice is in.
        from: Status,
        /// The status the event claims.
        to: Status,
        /// The status that would have been next.
        expected: Status,
    },
    /// The transition is allowed, but the event names the wrong stage.
    #[error("an event with status '{to}' must have stage '{expected}', not '{stage}'")]
    WrongStage {
        /// The status the invoice is in (`None`: first event).
        from: Option<Status>,
        /// The status the event claims.
        to: Status,
        /// The stage the event names.
        stage: Stage,
        /// The stage that makes this transition.
        expected: Stage,
    },
}

impl TransitionError {
    /// The stable, machine-readable code for this error.
    pub const fn code(&self) -> &'static str {
        match self {
            TransitionError::InvalidInitial { .. } => "invalid_initial_status",
            TransitionError::FromTerminal { .. } => "transition_from_terminal",
            TransitionError::Backwards { .. } => "transition_backwards",
            TransitionError::Repeated { .. } => "transition_repeated",
            TransitionError::SkipsStage { .. } => "transition_skips_stage",
            TransitionError::WrongStage { .. } => "stage_mismatch",
        }
    }
}

/// Checks that an event with `stage` may move an invoice from `from` (`None`
/// for its first event) to `to`.
pub fn check_transition(from: Option<Status>, to: Status, stage: Stage) -> Result<(), TransitionError> {
    if let Some(&(_, _, expected)) = TRANSITIONS.iter().find(|(f, t, _)| *f == from && *t == to) {
        return if expected == stage { Ok(()) } else { Err(TransitionError::WrongStage { from, to, stage, expected }) };
    }
    let Some(from) = from else {
        return Err(TransitionError::InvalidInitial { to });
    };
    if from.is_terminal() {
        return Err(TransitionError::FromTerminal { from, to });
    }
    // `from` is non-terminal, so it has a successor in the table.
    let expected = TRANSITIONS
        .iter()
        .find(|(f, t, _)| *f == Some(from) && *t != Status::Rejected)
        .map_or(Status::Posted, |&(_, t, _)| t);
    Err(match to.rank().cmp(&from.rank()) {
        std::cmp::Ordering::Less => TransitionError::Backwards { from, to },
        std::cmp::Ordering::Equal => TransitionError::Repeated { from, to },
        std::cmp::Ordering::Greater => TransitionError::SkipsStage { from, to, expected },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn happy_path_walks_all_four_stages() {
        let path = [
            (None, Status::Submitted, Stage::Ingestion),
            (Some(Status::Submitted), Status::Ingested, Stage::Reconciliation),
            (Some(Status::Ingested), Status::Reconciled, Stage::Authorization),
            (Some(Status::Reconciled), Status::Authorized, Stage::Posting),
            (Some(Status::Authorized), Status::Posted, Stage::Posting),
        ];
        for (from, to, stage) in path {
            assert_eq!(check_transition(from, to, stage), Ok(()), "{from:?} -> {to}");
        }
    }

    #[test]
    fn every_non_terminal_status_can_be_rejected_by_its_acting_stage() {
        for from in Status::ALL.into_iter().filter(|s| !s.is_terminal()) {
            let stage = from.acting_stage().expect("non-terminal");
            assert_eq!(check_transition(Some(from), Status::Rejected, stage), Ok(()));
        }
    }

    #[test]
    fn backwards_skips_terminal_and_repeats_are_named() {
        assert_eq!(
            check_transition(Some(Status::Reconciled), Status::Ingested, Stage::Reconciliation),
            Err(TransitionError::Backwards { from: Status::Reconciled, to: Status::Ingested })
        );
        assert_eq!(
            check_transition(Some(Status::Submitted), Status::Reconciled, Stage::Authorization),
            Err(TransitionError::SkipsStage {
                from: Status::Submitted,
                to: Status::Reconciled,
                expected: Status::Ingested
            })
        );
        assert_eq!(
            check_transition(Some(Status::Posted), Status::Rejected, Stage::Posting).map_err(|e| e.code()),
            Err("transition_from_terminal")
        );
        assert_eq!(
            check_transition(Some(Status::Ingested), Status::Ingested, Stage::Reconciliation).map_err(|e| e.code()),
            Err("transition_repeated")
        );
        assert_eq!(
            check_transition(None, Status::Ingested, Stage::Reconciliation).map_err(|e| e.code()),
            Err("invalid_initial_status")
        );
    }

    #[test]
    fn an_allowed_move_on_the_wrong_stage_is_a_stage_mismatch() {
        let err = check_transition(Some(Status::Submitted), Status::Ingested, Stage::Ingestion).unwrap_err();
        assert_eq!(err.code(), "stage_mismatch");
        assert!(err.to_string().contains("reconciliation"), "{err}");
    }

    #[test]
    fn table_agrees_with_stage_helpers() {
        for &(from, to, stage) in TRANSITIONS {
            // A non-terminal status is handed to the stage that acts on it;
            // a terminal one stays with the stage that decided it.
            let handed_to = match to.acting_stage() {
                Some(next) => next,
                None => from.and_then(Status::acting_stage).expect("terminal after non-terminal"),
            };
            assert_eq!(stage, handed_to, "{from:?} -> {to}");
            if let Some(s) = to.event_stage() {
                assert_eq!(s, stage, "{from:?} -> {to}");
            }
        }
    }

    #[test]
    fn wire_names_round_trip() {
        for s in Stage::ALL {
            assert_eq!(Stage::from_wire(s.as_str()), Some(s));
        }
        for s in Status::ALL {
            assert_eq!(Status::from_wire(s.as_str()), Some(s));
        }
        assert_eq!(Stage::from_wire("Ingestion"), None);
    }
}
