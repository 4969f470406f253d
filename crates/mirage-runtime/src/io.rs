//! Device readiness: a future that completes when the platform reports a
//! source ready.
//!
//! A device tries its operation without blocking; when the host has
//! nothing for it, it awaits [`ready`] for its source, and tries again. What
//! a [`Source`] is depends on the platform: a Solo5 device handle, a host
//! file descriptor.

use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};

use crate::core_state::with_core;

/// Something the platform can report ready: a Solo5 handle, a descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Source(pub u64);

/// What to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Interest {
    /// Input to read.
    Read,
    /// Room to write.
    Write,
}

/// Completes when the platform next reports `source` ready for `interest`
/// (readiness: the operation may still find nothing to do).
pub fn ready(source: Source, interest: Interest) -> Ready {
    Ready { key: (source, interest), token: None }
}

/// See [`ready`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct Ready {
    key: (Source, Interest),
    token: Option<u64>,
}

impl Future for Ready {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let key = self.key;
        let token = self.token;
        let waiting = with_core(|c| match token {
            // The platform removes a source's waiters when it becomes ready:
            // still listed means still waiting.
            Some(t) => match c.io.get_mut(&key).and_then(|ws| ws.iter_mut().find(|(wt, _)| *wt == t)) {
                Some((_, w)) => {
                    if !w.will_wake(cx.waker()) {
                        *w = cx.waker().clone();
                    }
                    Some(t)
                }
                None => None,
            },
            None => {
                let t = c.next_token;
                c.next_token += 1;
                c.io.entry(key).or_default().push((t, cx.waker().clone()));
                Some(t)
            }
        })
        .expect("mirage_runtime::io::ready outside the runtime");
        self.token = waiting;
        if waiting.is_some() { Poll::Pending } else { Poll::Ready(()) }
    }
}

impl Drop for Ready {
    fn drop(&mut self) {
        if let Some(t) = self.token {
            with_core(|c| {
                if let Some(ws) = c.io.get_mut(&self.key) {
                    ws.retain(|(wt, _)| *wt != t);
                    if ws.is_empty() {
                        c.io.remove(&self.key);
                    }
                }
            });
        }
    }
}
