//! The one retry engine of BEMS: how long to wait before the next attempt,
//! and when to give up.
//!
//! The producer SDK's `PutEvents` rounds, the route forwarder's SNS
//! batches, the batch core's in-place retries of transient record errors
//! and the runners' start-up lookups all wait through a [`RetryPolicy`];
//! they differ only in its numbers. Which AWS SDK errors are worth another
//! attempt is decided once, by [`is_transient`] (feature `aws-errors`).
//!
//! ```
//! use std::time::Duration;
//! use bems_core::retry::RetryPolicy;
//!
//! let policy = RetryPolicy { max_attempts: 3, ..RetryPolicy::default() };
//! // Before the first attempt there is nothing to wait for.
//! assert_eq!(policy.pause(0, Duration::ZERO), Some(Duration::ZERO));
//! // After a failure: a jittered pause, never beyond the ceiling.
//! assert!(policy.pause(1, Duration::ZERO).is_some_and(|d| d <= policy.base));
//! // Attempts used up, or the deadline passed: give up.
//! assert_eq!(policy.pause(3, Duration::ZERO), None);
//! assert_eq!(policy.pause(1, policy.deadline), None);
//! ```

use std::time::Duration;

/// Retry settings. Delays are `random(0, min(max_delay, base * 2^n))`
/// after the n+1-th failure ("full jitter"), which spreads the retries of
/// many callers best (AWS Architecture Blog, "Exponential Backoff And
/// Jitter").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts, the first included.
    pub max_attempts: u32,
    /// The first backoff ceiling.
    pub base: Duration,
    /// The largest backoff ceiling.
    pub max_delay: Duration,
    /// No attempt starts after this much time since the first one began.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    /// 8 attempts, 50 ms doubling up to 5 s, within 30 s: a producer's or
    /// forwarder's patience with a throttled service.
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 8,
            base: Duration::from_millis(50),
            max_delay: Duration::from_secs(5),
            deadline: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The delay after failure number `failure + 1`: full jitter under a
    /// ceiling that doubles from `base` up to `max_delay`.
    pub fn backoff(&self, failure: u32) -> Duration {
        let ceiling = self.base.saturating_mul(2_u32.saturating_pow(failure.min(20))).min(self.max_delay);
        ceiling.mul_f64(fastrand::f64())
    }

    /// How long to wait before the next attempt when `failures` attempts
    /// have failed and `elapsed` has passed since the first began; `None`
    /// when the policy gives up (every attempt used, or the deadline
    /// reached). The wait never runs past the deadline.
    pub fn pause(&self, failures: u32, elapsed: Duration) -> Option<Duration> {
        if failures >= self.max_attempts {
            return None;
        }
        self.pace(failures, elapsed)
    }

    /// [`pause`](Self::pause) for rounds of many items' attempts, where each
    /// item counts its own attempts against `max_attempts` and the rounds
    /// only wait (more after each round in which something failed) until
    /// the deadline.
    pub fn pace(&self, failing_rounds: u32, elapsed: Duration) -> Option<Duration> {
        if elapsed >= self.deadline {
            return None;
        }
        if failing_rounds == 0 {
            return Some(Duration::ZERO);
        }
        Some(self.backoff(failing_rounds - 1).min(self.deadline - elapsed))
    }
}

/// Whether an AWS SDK call's error is worth another attempt: a timeout, no
/// connection, an unreadable response, a 5xx or throttling (feature
/// `aws-errors`). Every AWS SDK crate shares this error type, so the bus,
/// SNS, SQS and Timestream clients are all judged here; a caller with a
/// service-specific transient code (EventBridge's
/// `LimitExceededException`) adds it on top.
#[cfg(feature = "aws-errors")]
#[cfg_attr(docsrs, doc(cfg(feature = "aws-errors")))]
pub fn is_transient<E: aws_smithy_types::error::metadata::ProvideErrorMetadata>(
    e: &aws_smithy_runtime_api::client::result::SdkError<E, aws_smithy_runtime_api::client::orchestrator::HttpResponse>,
) -> bool {
    use aws_smithy_runtime_api::client::result::SdkError;
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => true,
        SdkError::ServiceError(s) => {
            s.raw().status().as_u16() >= 500 || s.err().code().is_some_and(|c| c.contains("Throttl"))
        }
        _ => false,
    }
}

/// An AWS SDK error as one short line: the service's code and message
/// when the service answered (the raw response stays out of it), otherwise
/// the transport failure (connection refused, timeout), so that a dead
/// endpoint is named as such.
#[cfg(feature = "aws-errors")]
#[cfg_attr(docsrs, doc(cfg(feature = "aws-errors")))]
pub fn describe<E>(e: &E) -> String
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error + 'static,
{
    match (e.code(), e.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_owned(),
        _ => aws_smithy_types::error::display::DisplayErrorContext(e).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_full_jitter_under_a_ceiling() {
        let p = RetryPolicy::default();
        for failure in 0..30 {
            let d = p.backoff(failure);
            assert!(d <= p.max_delay);
            assert!(d <= p.base.saturating_mul(2_u32.saturating_pow(failure.min(20))));
        }
    }

    #[test]
    fn a_pause_never_runs_past_the_deadline() {
        let p = RetryPolicy {
            max_attempts: 100,
            base: Duration::from_secs(10),
            max_delay: Duration::from_secs(10),
            deadline: Duration::from_secs(30),
        };
        for _ in 0..100 {
            let wait = p.pause(5, Duration::from_secs(29)).expect("before the deadline");
            assert!(wait <= Duration::from_secs(1), "{wait:?}");
        }
    }

    #[test]
    fn the_policy_gives_up_after_its_attempts() {
        let p = RetryPolicy { max_attempts: 2, ..RetryPolicy::default() };
        assert!(p.pause(1, Duration::ZERO).is_some());
        assert_eq!(p.pause(2, Duration::ZERO), None);
    }

    #[cfg(feature = "aws-errors")]
    mod sdk_errors {
        use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
        use aws_smithy_runtime_api::client::result::SdkError;
        use aws_smithy_runtime_api::http::StatusCode;
        use aws_smithy_types::body::SdkBody;
        use aws_smithy_types::error::ErrorMetadata;

        use super::super::is_transient;

        fn service_error(status: u16, code: &str) -> SdkError<ErrorMetadata, HttpResponse> {
            let raw = HttpResponse::new(StatusCode::try_from(status).expect("status"), SdkBody::empty());
            SdkError::service_error(ErrorMetadata::builder().code(code).build(), raw)
        }

        #[test]
        fn throttling_and_server_errors_are_transient() {
            assert!(is_transient(&service_error(400, "ThrottlingException")));
            assert!(is_transient(&service_error(400, "Throttling")));
            assert!(is_transient(&service_error(503, "ServiceUnavailable")));
            assert!(is_transient(&SdkError::<ErrorMetadata, HttpResponse>::timeout_error("slow")));
        }

        #[test]
        fn client_errors_are_permanent() {
            assert!(!is_transient(&service_error(400, "ValidationException")));
            assert!(!is_transient(&service_error(403, "AccessDeniedException")));
        }
    }
}
