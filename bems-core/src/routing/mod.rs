//! Routing rules as typed values: EventBridge event patterns, SNS filter
//! policies, and a rule set that finds every matching rule without trying
//! each one.
//!
//! The same values render the rules of a cell (`infra/`, provisioning) and
//! evaluate them locally, so what AWS routes and what the tests exercise
//! cannot differ. Semantics follow the AWS documentation and AWS's
//! `event-ruler`, which EventBridge runs; see [`EventPattern`] for the
//! operator list.
//!
//! ```
//! use bems_core::routing::{EventPattern, FilterPolicy, FilterPolicyScope};
//! use serde_json::json;
//!
//! let rule = EventPattern::from_json(r#"{"detail": {"stage": ["posting"], "amount": [{"numeric": [">=", 10000]}]}}"#)?;
//! assert!(rule.matches(&json!({"detail": {"stage": "posting", "amount": 25000.5}})));
//! assert!(!rule.matches(&json!({"detail": {"stage": "posting", "amount": "25000.5"}})));
//!
//! let policy = FilterPolicy::from_json(r#"{"stage": ["posting"]}"#, FilterPolicyScope::MessageAttributes)?;
//! assert!(policy.matches(&json!(null), &json!({"stage": {"Type": "String", "Value": "posting"}})));
//! # Ok::<(), bems_core::routing::PatternError>(())
//! ```

mod builder;
mod cell;
mod event_pattern;
mod filter_policy;
mod ruleset;
mod tree;

pub use builder::{Match, PatternBuilder};
pub use cell::{CellSpec, CellSpecError, Quotas, StageRule, Subscription};
pub use event_pattern::EventPattern;
pub use filter_policy::{FilterPolicy, FilterPolicyScope, MAX_COMBINATIONS, MAX_KEYS};
pub use ruleset::{RuleSet, RuleSetError};
pub use tree::{NUMERIC_LIMIT, PatternError, PatternErrorKind};
