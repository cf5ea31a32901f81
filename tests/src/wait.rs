//! Waiting for conditions instead of sleeping.
//!
//! [`eventually`] polls a probe with a short, growing backoff until it succeeds or `patience`
//! runs out; the error names what was awaited and the last thing the probe saw. A probe that
//! knows waiting longer is pointless (the process it watches died) returns [`give_up`]`(err)`
//! and the wait ends at once with that error.

use std::fmt::{self, Debug, Display};
use std::future::Future;
use std::time::Duration;

use anyhow::{Result, anyhow};
use tokio::time::Instant;

/// Patience for things that should happen within a few seconds on an idle machine; generous
/// because CI machines are small and shared.
pub const PATIENCE: Duration = Duration::from_secs(30);

const FIRST_DELAY: Duration = Duration::from_millis(5);
const MAX_DELAY: Duration = Duration::from_millis(200);
/// Even the last attempt gets this long before it is abandoned.
const MIN_ATTEMPT: Duration = Duration::from_millis(200);

/// Marks an error as final: [`eventually`] stops polling and returns it.
#[derive(Debug)]
pub struct GiveUp(String);

impl Display for GiveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GiveUp {}

/// Wraps `err` so that [`eventually`] stops waiting and fails with it.
pub fn give_up(err: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(GiveUp(format!("{err:#}")))
}

/// Calls `probe` until it returns `Ok`, at most for `patience` (each attempt is also cut off
/// at the deadline). Between attempts it sleeps 5 ms, doubling up to 200 ms.
///
/// The error reads "timed out after …s waiting for `what`; last observed: `<last error>`".
pub async fn eventually<F, Fut, T>(what: &str, patience: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let start = Instant::now();
    let deadline = start + patience;
    let mut delay = FIRST_DELAY;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let budget = deadline
            .saturating_duration_since(Instant::now())
            .max(MIN_ATTEMPT);
        let last = match tokio::time::timeout(budget, probe()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) if e.downcast_ref::<GiveUp>().is_some() => {
                return Err(e.context(format!("gave up waiting for {what}")));
            }
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => format!("the attempt itself took longer than {budget:?}"),
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(anyhow!(
                "timed out after {:.1?} ({attempts} attempts) waiting for {what}; last observed: {last}",
                now - start
            ));
        }
        tokio::time::sleep(delay.min(deadline - now)).await;
        delay = (delay * 2).min(MAX_DELAY);
    }
}

/// Polls `probe` until its value satisfies `pred`, and returns that value. A probe error counts
/// as "not yet"; the timeout error shows the last value (`Debug`) or error.
pub async fn eventually_matches<F, Fut, V, P>(
    what: &str,
    patience: Duration,
    mut probe: F,
    pred: P,
) -> Result<V>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<V>>,
    V: Debug,
    P: Fn(&V) -> bool,
{
    let pred = &pred;
    eventually(what, patience, move || {
        let fut = probe();
        async move {
            let value = fut.await?;
            if pred(&value) {
                Ok(value)
            } else {
                Err(anyhow!("{value:?}"))
            }
        }
    })
    .await
}

/// Asserts that a condition becomes true within a patience; panics (failing the test and
/// dumping the logs of live [`crate::process::Child`]ren) otherwise. Evaluates to the value.
///
/// ```ignore
/// let n = assert_eventually!(PATIENCE, async { Ok(echo.requests()) }, |n| *n >= 3);
/// let stats = assert_eventually!(PATIENCE, envoy.stats(), |s| s.get("x").is_some());
/// ```
///
/// The probe is an expression evaluating to a future of `anyhow::Result<V>`; it is evaluated
/// afresh for every attempt.
#[macro_export]
macro_rules! assert_eventually {
    ($patience:expr, $probe:expr, $pred:expr $(,)?) => {
        match $crate::wait::eventually_matches(
            concat!(
                "`",
                stringify!($probe),
                "` to satisfy `",
                stringify!($pred),
                "`"
            ),
            $patience,
            || $probe,
            $pred,
        )
        .await
        {
            ::std::result::Result::Ok(value) => value,
            ::std::result::Result::Err(e) => panic!("assertion failed: {e:#}"),
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn returns_once_the_probe_succeeds() -> Result<()> {
        let calls = AtomicU32::new(0);
        let got = eventually("the third call", PATIENCE, || async {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            if n >= 3 {
                Ok(n)
            } else {
                Err(anyhow!("call {n}"))
            }
        })
        .await?;
        assert_eq!(got, 3);
        Ok(())
    }

    #[tokio::test]
    async fn timeout_names_what_and_last_observation() {
        let res: Result<()> = eventually(
            "the moon to turn blue",
            Duration::from_millis(100),
            || async { Err(anyhow!("still grey")) },
        )
        .await;
        let msg = format!("{:#}", res.err().unwrap_or_else(|| anyhow!("no error")));
        assert!(msg.contains("the moon to turn blue"), "{msg}");
        assert!(msg.contains("last observed: still grey"), "{msg}");
    }

    #[tokio::test]
    async fn a_hung_probe_is_cut_off_at_the_deadline() {
        let started = Instant::now();
        let res: Result<()> = eventually("a hung probe", Duration::from_millis(100), || async {
            std::future::pending::<()>().await;
            Ok(())
        })
        .await;
        assert!(res.is_err());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn give_up_stops_at_once() {
        let started = Instant::now();
        let res: Result<()> = eventually("something that cannot happen", PATIENCE, || async {
            Err(give_up(anyhow!("the process died")))
        })
        .await;
        let msg = format!("{:#}", res.err().unwrap_or_else(|| anyhow!("no error")));
        assert!(msg.contains("the process died"), "{msg}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn matches_reports_the_last_value() {
        let res = eventually_matches(
            "seven",
            Duration::from_millis(50),
            || async { Ok(6) },
            |v| *v == 7,
        )
        .await;
        let msg = format!("{:#}", res.err().unwrap_or_else(|| anyhow!("no error")));
        assert!(msg.ends_with("last observed: 6"), "{msg}");
    }

    #[tokio::test]
    async fn assert_eventually_yields_the_value() {
        let calls = AtomicU32::new(0);
        let v = crate::assert_eventually!(
            PATIENCE,
            async { Ok(calls.fetch_add(1, Ordering::SeqCst)) },
            |n| *n >= 2
        );
        assert_eq!(v, 2);
    }
}
