//! Per-connection timers that stay registered across requests.
//!
//! Every request on a keep-alive connection needs two deadlines: the client's next request head
//! (hyper's header-read timeout) and the upstream's response headers (the response timeout).
//! A fresh tokio timer per request costs a timer-wheel insert and remove, an allocation and a
//! clock read each time — together more than a tenth of the proxy's own work per request.
//!
//! A [`LazyTimer`] instead keeps one tokio `Sleep` per connection and only moves it when it
//! would fire *late*. A later deadline (the normal case: each request's deadline is after the
//! previous one's) leaves the armed timer alone; when that earlier timer fires, the clock is
//! read once and, if the current deadline has not passed yet, the timer is re-armed for it. So
//! a deadline is never missed nor reported early, and the wheel is touched about once per
//! timeout period per connection instead of once per request.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// A reusable deadline timer for one connection. Users must poll it from one task at a time
/// (a connection's hyper server and its service run in the connection's task).
#[derive(Debug, Default)]
pub struct LazyTimer {
    // The lock is uncontended: only the connection's task polls it.
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    // Created at the first use (a connection that never needs it never touches the wheel).
    sleep: Option<Pin<Box<Sleep>>>,
    // The waker the armed `sleep` will wake: while it is the caller's and the sleep has not
    // fired, polling the sleep again would change nothing.
    registered: Option<Waker>,
}

impl LazyTimer {
    /// An idle timer.
    pub fn new() -> Self {
        Self::default()
    }

    /// `Ready` once `deadline` has passed; otherwise registers `cx`'s waker to be woken at
    /// (or, at most once per call site, somewhat before) the deadline.
    pub fn poll_until(&self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let State { sleep, registered } = &mut *guard;
        let sleep = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() > deadline {
            // Armed for later than this deadline: it would fire late, so move it.
            sleep.as_mut().reset(deadline);
            *registered = None;
        } else if registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) && !sleep.is_elapsed() {
            return Poll::Pending;
        }
        let r = match sleep.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                // The armed time (at or before `deadline`) has passed; is `deadline` itself due?
                if Instant::now() >= deadline {
                    *registered = None;
                    return Poll::Ready(());
                }
                sleep.as_mut().reset(deadline);
                // tokio fires a timer only once the clock reached its deadline (rounded up to
                // the next millisecond), so this registers the waker and returns `Pending`.
                sleep.as_mut().poll(cx)
            }
        };
        *registered = r.is_pending().then(|| cx.waker().clone());
        r
    }
}

/// Run `fut` until it completes (`Some`) or `deadline` passes first (`None`), using `timer`.
pub async fn with_deadline<F: Future>(timer: &LazyTimer, deadline: Instant, fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        timer.poll_until(cx, deadline).map(|()| None)
    })
    .await
}

/// hyper's [`Timer`](hyper::rt::Timer) for one server connection (it only uses it for the
/// header-read timeout), backed by a [`LazyTimer`].
#[derive(Clone, Debug, Default)]
pub struct ConnTimer(Arc<LazyTimer>);

impl ConnTimer {
    /// A timer for a new connection.
    pub fn new() -> Self {
        Self::default()
    }
}

impl hyper::rt::Timer for ConnTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(LazySleep { timer: self.0.clone(), deadline: deadline.into() })
    }

    fn now(&self) -> std::time::Instant {
        // tokio's clock, so paused-time tests see the same time as the timer wheel.
        Instant::now().into_std()
    }
}

/// One deadline on a shared [`LazyTimer`].
#[derive(Debug)]
struct LazySleep {
    timer: Arc<LazyTimer>,
    deadline: Instant,
}

impl Future for LazySleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.timer.poll_until(cx, self.deadline)
    }
}

impl hyper::rt::Sleep for LazySleep {}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    // Upper bound for "not much late": generous, the machine may be busy.
    const SLACK: Duration = Duration::from_millis(500);

    #[tokio::test]
    async fn fires_at_each_deadline_never_early() {
        let t = LazyTimer::new();
        let start = Instant::now();
        // The first deadline arms the timer.
        assert_eq!(with_deadline(&t, start + 100 * MS, std::future::ready(1)).await, Some(1));
        // A later deadline keeps the earlier armed time; it must still wait for its own.
        let d2 = start + 250 * MS;
        assert_eq!(with_deadline(&t, d2, std::future::pending::<()>()).await, None);
        let now = Instant::now();
        assert!(now >= d2, "fired early: {:?}", now - start);
        assert!(now < d2 + SLACK);
        // A deadline earlier than the armed one moves it.
        let d3 = Instant::now() + 50 * MS;
        let _ = with_deadline(&t, d3 + 60 * Duration::from_secs(1), std::future::ready(())).await;
        assert_eq!(with_deadline(&t, d3, std::future::pending::<()>()).await, None);
        let now = Instant::now();
        assert!(now >= d3 && now < d3 + SLACK);
        // Work that finishes in time is not interrupted.
        let d4 = Instant::now() + 300 * MS;
        let work = async {
            tokio::time::sleep(20 * MS).await;
            7
        };
        assert_eq!(with_deadline(&t, d4, work).await, Some(7));
    }

    #[tokio::test]
    async fn hyper_sleeps_share_the_timer() {
        use hyper::rt::Timer;
        let t = ConnTimer::new();
        let start = Instant::now();
        t.sleep(60 * MS).await;
        assert!(Instant::now() >= start + 60 * MS);
        let d = t.now() + 80 * MS;
        t.sleep_until(d).await;
        assert!(Instant::now().into_std() >= d);
    }
}
