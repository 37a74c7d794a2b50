//! What happens to a failed event or record: the one place that applies a class's policy
//! (`error-policy.<class>` in the spec), for the worker (a plugin failed an event or panicked),
//! the table writer (the database rejected a record) and file runs (an undecodable line) alike.
//!
//! The decision is pure: retry the failed thing alone up to `retries` times, `backoff-ms` apart
//! and doubling, and if it still fails, `then` (fail, skip or dead-letter). Callers supply the
//! retry (one more attempt) and the waiting, and carry out the verdict with their own side
//! effects: how a failed event is dead-lettered differs from how a rejected row is, but whether
//! it is, after how many attempts and with which last message, is decided here.

use std::time::Duration;

use sluice_plugin_api::host::EventErrorKind;

use crate::config::{Action, ClassPolicy, ErrorPolicy};

/// The failure classes of the error policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The plugin said the event's input is invalid (or a file line does not decode).
    InvalidInput,
    /// The plugin failed the event.
    EventError,
    /// The plugin panicked on the event.
    PluginPanic,
    /// A sink refused a record for good.
    SinkRejection,
}

impl Class {
    /// The class of an event error a plugin reported.
    pub fn of(kind: EventErrorKind) -> Class {
        match kind {
            EventErrorKind::InvalidInput => Class::InvalidInput,
            EventErrorKind::Failed => Class::EventError,
        }
    }

    /// Its name in the spec (`error-policy.<name>`) and in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Class::InvalidInput => "invalid-input",
            Class::EventError => "event-error",
            Class::PluginPanic => "plugin-panic",
            Class::SinkRejection => "sink-rejection",
        }
    }

    /// Its policy in `policy`.
    pub fn policy(self, policy: &ErrorPolicy) -> ClassPolicy {
        match self {
            Class::InvalidInput => policy.invalid_input,
            Class::EventError => policy.event_error,
            Class::PluginPanic => policy.plugin_panic,
            Class::SinkRejection => policy.sink_rejection,
        }
    }
}

/// How one more attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// It worked: nothing more to decide.
    Succeeded,
    /// It failed again, with this message.
    Failed(String),
    /// Something worse happened (the caller already stopped the pipeline): stop trying.
    Stop,
}

/// The verdict on a failed event or record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A retry worked, after this many attempts in all.
    Recovered {
        /// Attempts, the first one included.
        attempts: u32,
    },
    /// The retries are used up (or there were none): carry out `action`.
    Settled {
        /// What the policy says to do now.
        action: Action,
        /// Attempts, the first one included.
        attempts: u32,
        /// The last failure's message.
        message: String,
    },
    /// An attempt said stop.
    Stopped,
}

/// Applies `policy` to something that failed once with `message`: `retry` makes one more
/// attempt, `wait` waits before it (backoff-ms, doubling).
pub fn decide(
    policy: &ClassPolicy,
    message: String,
    mut retry: impl FnMut() -> Attempt,
    mut wait: impl FnMut(Duration),
) -> Verdict {
    let mut message = message;
    let mut attempts = 1;
    let mut backoff = Duration::from_millis(policy.backoff_ms);
    while attempts <= policy.retries {
        wait(backoff);
        backoff *= 2;
        attempts += 1;
        match retry() {
            Attempt::Succeeded => return Verdict::Recovered { attempts },
            Attempt::Failed(m) => message = m,
            Attempt::Stop => return Verdict::Stopped,
        }
    }
    Verdict::Settled {
        action: policy.then,
        attempts,
        message,
    }
}

/// [`decide`] with real sleeps between attempts.
pub fn decide_sleeping(
    policy: &ClassPolicy,
    message: String,
    retry: impl FnMut() -> Attempt,
) -> Verdict {
    decide(policy, message, retry, std::thread::sleep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(retries: u32, then: Action) -> ClassPolicy {
        ClassPolicy {
            retries,
            backoff_ms: 100,
            then,
        }
    }

    /// Runs `decide` with attempts answering from `answers` in turn; returns the verdict, the
    /// waits and how many retries were made.
    fn run(p: ClassPolicy, answers: &[Attempt]) -> (Verdict, Vec<u64>, usize) {
        let mut waits = Vec::new();
        let mut next = answers.iter();
        let mut made = 0;
        let verdict = decide(
            &p,
            "first".into(),
            || {
                made += 1;
                next.next().cloned().expect("no more retries expected")
            },
            |d| waits.push(d.as_millis() as u64),
        );
        (verdict, waits, made)
    }

    #[test]
    fn without_retries_the_action_applies_at_once() {
        for action in [Action::Fail, Action::Skip, Action::DeadLetter] {
            let (verdict, waits, made) = run(policy(0, action), &[]);
            assert_eq!(
                verdict,
                Verdict::Settled {
                    action,
                    attempts: 1,
                    message: "first".into()
                }
            );
            assert_eq!((waits, made), (vec![], 0));
        }
    }

    #[test]
    fn retries_back_off_doubling_and_keep_the_last_message() {
        let failed = |m: &str| Attempt::Failed(m.into());
        let (verdict, waits, made) = run(
            policy(3, Action::DeadLetter),
            &[failed("second"), failed("third"), failed("fourth")],
        );
        assert_eq!(
            verdict,
            Verdict::Settled {
                action: Action::DeadLetter,
                attempts: 4,
                message: "fourth".into()
            }
        );
        assert_eq!(waits, [100, 200, 400]);
        assert_eq!(made, 3);
    }

    #[test]
    fn a_retry_that_works_recovers_and_a_stop_stops() {
        let (verdict, _, made) = run(
            policy(5, Action::Fail),
            &[Attempt::Failed("again".into()), Attempt::Succeeded],
        );
        assert_eq!(verdict, Verdict::Recovered { attempts: 3 });
        assert_eq!(made, 2);
        let (verdict, _, made) = run(policy(5, Action::Skip), &[Attempt::Stop]);
        assert_eq!(verdict, Verdict::Stopped);
        assert_eq!(made, 1);
    }
}
