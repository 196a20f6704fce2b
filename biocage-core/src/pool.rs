//! A pool of started sessions of one configuration: handed out at once, refilled in the
//! background, never handed to a second caller (a session given out is the caller's:
//! closing it retires it).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::config::SandboxConfig;
use crate::error::Result;
use crate::runtime::{SandboxRuntime, Session};

/// How a [`SessionPool`] behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolOptions {
    /// Sessions kept started and ready.
    pub size: usize,
    /// Most sessions the pool starts at once (ready plus being started).
    pub max_size: usize,
    /// Without any acquire for this long, the pool closes its ready sessions and
    /// starts new ones only at the next acquire.
    pub idle_timeout: Duration,
    /// A ready session older than this is closed and replaced.
    pub max_lifetime: Duration,
}

impl PoolOptions {
    /// `size` ready sessions, at most twice that starting at once, 10 minutes idle,
    /// 1 hour lifetime.
    pub fn new(size: usize) -> Self {
        PoolOptions {
            size,
            max_size: size.saturating_mul(2).max(1),
            idle_timeout: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
        }
    }

    /// Sets the idle timeout.
    pub fn idle_timeout(mut self, t: Duration) -> Self {
        self.idle_timeout = t;
        self
    }

    /// Sets the maximum lifetime of a ready session.
    pub fn max_lifetime(mut self, t: Duration) -> Self {
        self.max_lifetime = t;
        self
    }
}

/// What a pool holds now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Sessions started and waiting.
    pub ready: usize,
    /// Sessions handed out so far.
    pub handed_out: u64,
    /// Refills that failed (each retried with back-off).
    pub failed_refills: u64,
    /// The last refill error, if the last refill failed.
    pub last_error: Option<String>,
    /// Ids of the ready sessions.
    pub ready_sessions: Vec<String>,
}

struct Ready {
    session: Box<dyn Session>,
    started: Instant,
}

struct Inner {
    rt: Arc<dyn SandboxRuntime>,
    config: SandboxConfig,
    opts: PoolOptions,
    state: Mutex<State>,
    wake: tokio::sync::Notify,
}

#[derive(Default)]
struct State {
    ready: VecDeque<Ready>,
    starting: usize,
    last_acquire: Option<Instant>,
    stats: PoolStats,
    shut: bool,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // The state is plain data: a panic elsewhere cannot leave it half-updated.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keeps sessions of one configuration started and healthy; see the module doc.
/// Dropping it (or [`SessionPool::shutdown`]) closes every ready session.
pub struct SessionPool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SessionPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionPool")
            .field("opts", &self.inner.opts)
            .field("stats", &self.stats())
            .finish()
    }
}

impl SessionPool {
    /// A pool of sessions made by `rt` with `config`. The configuration and its limits
    /// are checked now (an error here is the caller's), then filling starts in the
    /// background on the current tokio runtime.
    pub async fn new(
        rt: Arc<dyn SandboxRuntime>,
        config: SandboxConfig,
        opts: PoolOptions,
    ) -> Result<Self> {
        config.validate()?;
        rt.limit_plan(&config).await?;
        let inner = Arc::new(Inner {
            rt,
            config,
            opts,
            state: Mutex::new(State {
                last_acquire: Some(Instant::now()),
                ..State::default()
            }),
            wake: tokio::sync::Notify::new(),
        });
        tokio::spawn(refill(Arc::downgrade(&inner)));
        Ok(SessionPool { inner })
    }

    /// A started session, fresh and used by no one before: a ready one at once when
    /// there is one (checked alive), else one started now. The pool refills behind.
    pub async fn acquire(&self) -> Result<Box<dyn Session>> {
        loop {
            let next = {
                let mut st = lock(&self.inner.state);
                st.last_acquire = Some(Instant::now());
                st.ready.pop_front()
            };
            self.inner.wake.notify_one();
            match next {
                Some(r) => match r.session.ping().await {
                    Ok(()) => {
                        lock(&self.inner.state).stats.handed_out += 1;
                        return Ok(r.session);
                    }
                    Err(e) => {
                        tracing::warn!("a pooled session was not healthy ({e}); closing it");
                        let _ = r.session.close().await;
                    }
                },
                None => {
                    let s = self.inner.rt.create_session(&self.inner.config).await?;
                    lock(&self.inner.state).stats.handed_out += 1;
                    return Ok(s);
                }
            }
        }
    }

    /// What the pool holds now.
    pub fn stats(&self) -> PoolStats {
        let st = lock(&self.inner.state);
        PoolStats {
            ready: st.ready.len(),
            ready_sessions: st
                .ready
                .iter()
                .map(|r| r.session.id().to_string())
                .collect(),
            ..st.stats.clone()
        }
    }

    /// Waits until `n` sessions are ready (or `timeout` passed); returns how many are.
    pub async fn wait_ready(&self, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let ready = lock(&self.inner.state).ready.len();
            if ready >= n || Instant::now() >= deadline {
                return ready;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops refilling and closes every ready session (their containers are removed).
    pub async fn shutdown(self) {
        let ready = {
            let mut st = lock(&self.inner.state);
            st.shut = true;
            std::mem::take(&mut st.ready)
        };
        self.inner.wake.notify_one();
        for r in ready {
            if let Err(e) = r.session.close().await {
                tracing::warn!("closing a pooled session: {e}");
            }
        }
    }
}

impl Drop for SessionPool {
    fn drop(&mut self) {
        let ready = {
            let mut st = lock(&self.inner.state);
            st.shut = true;
            std::mem::take(&mut st.ready)
        };
        self.inner.wake.notify_one();
        // Each session removes its container when dropped.
        drop(ready);
    }
}

/// The background filler: keeps `size` sessions ready, replaces old ones, backs off on
/// engine errors; ends when the pool is gone or shut.
async fn refill(pool: Weak<Inner>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(inner) = pool.upgrade() else { return };
        let (missing, expired, idle) = {
            let mut st = lock(&inner.state);
            if st.shut {
                return;
            }
            let idle = st
                .last_acquire
                .is_some_and(|t| t.elapsed() > inner.opts.idle_timeout);
            let lifetime = inner.opts.max_lifetime;
            let (old, young): (Vec<Ready>, Vec<Ready>) = std::mem::take(&mut st.ready)
                .into_iter()
                .partition(|r| idle || r.started.elapsed() > lifetime);
            st.ready = young.into();
            let room = inner
                .opts
                .max_size
                .saturating_sub(st.ready.len() + st.starting);
            let missing = if idle {
                0
            } else {
                inner
                    .opts
                    .size
                    .saturating_sub(st.ready.len() + st.starting)
                    .min(room)
            };
            st.starting += missing;
            (missing, old, idle)
        };
        for r in expired {
            let _ = r.session.close().await;
        }
        let made = futures_util::future::join_all(
            (0..missing).map(|_| inner.rt.create_session(&inner.config)),
        )
        .await;
        let mut failed = false;
        {
            let mut st = lock(&inner.state);
            st.starting -= missing;
            for outcome in made {
                match outcome {
                    Ok(session) if !st.shut => st.ready.push_back(Ready {
                        session,
                        started: Instant::now(),
                    }),
                    Ok(_) => {}
                    Err(e) => {
                        failed = true;
                        st.stats.failed_refills += 1;
                        st.stats.last_error = Some(e.to_string());
                        tracing::warn!(
                            "refilling the session pool failed (retried in {backoff:?}): {e}"
                        );
                    }
                }
            }
            if !failed && missing > 0 {
                st.stats.last_error = None;
            }
        }
        if failed {
            drop(inner);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
            continue;
        }
        backoff = Duration::from_millis(100);
        let wake = async {
            let wait = if idle {
                Duration::from_secs(3600)
            } else {
                Duration::from_secs(1)
            };
            tokio::select! {
                () = inner.wake.notified() => {},
                () = tokio::time::sleep(wait) => {},
            }
        };
        wake.await;
    }
}
