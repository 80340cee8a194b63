//! Upstream pools: the instances of one service, how one is picked, and what
//! the gateway knows of each (requests in flight, latency, health, breaker).

use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::config::{Balance, BreakerConfig, UpstreamConfig};
use crate::upstream::{Connections, SendError};

/// Points per instance on the consistent-hash ring: enough that instances
/// share the ring evenly.
const RING_POINTS: usize = 160;
/// The decay time of the latency average: a slow answer counts fully at
/// once (the peak), then fades over about this long.
const EWMA_DECAY: Duration = Duration::from_secs(10);

/// One instance of a service.
#[derive(Debug)]
pub(crate) struct Instance {
    /// `http://host:port`.
    pub(crate) address: String,
    pub(crate) authority: http::uri::Authority,
    /// Its connections, idle between requests.
    connections: Arc<Connections>,
    in_flight: AtomicUsize,
    /// Whether its last health check passed (true until the first says otherwise).
    healthy: AtomicBool,
    latency: Mutex<Ewma>,
    breaker: Mutex<Breaker>,
}

#[derive(Debug)]
struct Ewma {
    /// Nanoseconds.
    value: f64,
    at: Instant,
}

/// An instance's circuit breaker (see [`BreakerConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Breaker {
    /// Answering; counts failures in a row.
    Closed { failures: u32 },
    /// Passed over until then.
    Open { until: Instant },
    /// One probe request is in flight (or may be sent).
    HalfOpen { probing: bool },
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain numbers and instants: a panic elsewhere cannot leave them half-written.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Instance {
    pub(crate) fn new(address: &str, authority: http::uri::Authority) -> Instance {
        Instance {
            address: address.to_owned(),
            authority,
            connections: Arc::default(),
            in_flight: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            latency: Mutex::new(Ewma {
                value: 0.0,
                at: Instant::now(),
            }),
            breaker: Mutex::new(Breaker::Closed { failures: 0 }),
        }
    }

    /// Sends `request` (origin-form URI, `Host` set) on one of its
    /// connections, a new one made within `connect_timeout` if none is idle.
    pub(crate) async fn send(
        &self,
        connect_timeout: Duration,
        request: http::Request<axum::body::Body>,
    ) -> Result<http::Response<axum::body::Body>, SendError> {
        self.connections
            .send(self.authority.as_str(), connect_timeout, request)
            .await
    }

    /// Whether a request may be sent to it now, taking the half-open probe
    /// slot when that is what lets it through.
    fn admit(&self, now: Instant) -> bool {
        if !self.healthy.load(Ordering::Relaxed) {
            return false;
        }
        let mut breaker = lock(&self.breaker);
        match *breaker {
            Breaker::Closed { .. } => true,
            Breaker::Open { until } if now >= until => {
                *breaker = Breaker::HalfOpen { probing: true };
                true
            }
            Breaker::Open { .. } => false,
            Breaker::HalfOpen { probing: false } => {
                *breaker = Breaker::HalfOpen { probing: true };
                true
            }
            Breaker::HalfOpen { probing: true } => false,
        }
    }

    /// Whether it could take a request now (without taking a probe slot).
    pub(crate) fn available(&self, now: Instant) -> bool {
        self.healthy.load(Ordering::Relaxed)
            && match *lock(&self.breaker) {
                Breaker::Closed { .. } | Breaker::HalfOpen { probing: false } => true,
                Breaker::Open { until } => now >= until,
                Breaker::HalfOpen { probing: true } => false,
            }
    }

    /// A request to it got an answer after `latency`.
    pub(crate) fn succeeded(&self, latency: Duration) {
        *lock(&self.breaker) = Breaker::Closed { failures: 0 };
        let now = Instant::now();
        let mut ewma = lock(&self.latency);
        let sample = latency.as_nanos() as f64;
        if sample > ewma.value {
            // Peak-sensitive: a slow answer is believed at once.
            ewma.value = sample;
        } else {
            let elapsed = now.saturating_duration_since(ewma.at).as_secs_f64();
            let weight = (-elapsed / EWMA_DECAY.as_secs_f64()).exp();
            ewma.value = ewma.value * weight + sample * (1.0 - weight);
        }
        ewma.at = now;
    }

    /// A request to it failed (no answer, or a 502/503/504 of its own).
    pub(crate) fn failed(&self, breaker: &BreakerConfig) {
        let mut state = lock(&self.breaker);
        let open = Breaker::Open {
            until: Instant::now() + Duration::from_millis(breaker.open_ms),
        };
        *state = match *state {
            Breaker::Closed { failures } if failures + 1 >= breaker.consecutive_failures => {
                tracing::warn!(upstream = %self.address, "circuit breaker open");
                open
            }
            Breaker::Closed { failures } => Breaker::Closed {
                failures: failures + 1,
            },
            Breaker::HalfOpen { .. } | Breaker::Open { .. } => open,
        };
    }

    /// The request ended without telling anything about the instance (the
    /// client went away): a probe slot it held is given back.
    pub(crate) fn abandoned(&self) {
        let mut state = lock(&self.breaker);
        if *state == (Breaker::HalfOpen { probing: true }) {
            *state = Breaker::HalfOpen { probing: false };
        }
    }

    pub(crate) fn set_healthy(&self, healthy: bool) {
        let was = self.healthy.swap(healthy, Ordering::Relaxed);
        if was != healthy {
            if healthy {
                tracing::info!(upstream = %self.address, "health check passes: back in the pool");
            } else {
                tracing::warn!(upstream = %self.address, "health check fails: out of the pool");
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn breaker(&self) -> Breaker {
        *lock(&self.breaker)
    }

    fn cost(&self) -> f64 {
        let in_flight = self.in_flight.load(Ordering::Relaxed) as f64;
        let latency = lock(&self.latency).value.max(1.0);
        latency * (in_flight + 1.0)
    }

    /// Counts a request in flight until the guard drops.
    pub(crate) fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            instance: self.clone(),
            settled: false,
        }
    }
}

/// A request in flight to an instance. Its outcome goes to the instance's
/// latency and breaker; dropped without one (the client went away), it gives
/// back the half-open probe slot it may hold, so the instance is not left
/// waiting for a probe that never ends.
pub(crate) struct InFlight {
    instance: Arc<Instance>,
    settled: bool,
}

impl InFlight {
    /// The instance answered after `latency`.
    pub(crate) fn succeeded(mut self, latency: Duration) {
        self.settled = true;
        self.instance.succeeded(latency);
    }

    /// The instance failed the request.
    pub(crate) fn failed(mut self, breaker: &BreakerConfig) {
        self.settled = true;
        self.instance.failed(breaker);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.instance.in_flight.fetch_sub(1, Ordering::Relaxed);
        if !self.settled {
            self.instance.abandoned();
        }
    }
}

/// The instances of one service, and how one is picked.
#[derive(Debug)]
pub(crate) struct Pool {
    pub(crate) name: String,
    pub(crate) instances: Vec<Arc<Instance>>,
    pub(crate) config: UpstreamConfig,
    next: AtomicUsize,
    /// (point, instance) sorted by point, for `ip_hash`.
    ring: Vec<(u64, usize)>,
    retry_tokens: Mutex<f64>,
}

/// The most retries the budget saves up.
const RETRY_BURST: f64 = 10.0;

fn hash_of(value: impl Hash) -> u64 {
    // SipHash with fixed keys: the same on every gateway replica of one build.
    let mut hasher = std::hash::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

impl Pool {
    pub(crate) fn new(name: &str, config: UpstreamConfig) -> Pool {
        let instances: Vec<Arc<Instance>> = config
            .addresses
            .iter()
            .filter_map(|a| {
                crate::config::parse_address(a)
                    .map(|authority| Arc::new(Instance::new(a, authority)))
            })
            .collect();
        let mut ring: Vec<(u64, usize)> = instances
            .iter()
            .enumerate()
            .flat_map(|(i, instance)| {
                (0..RING_POINTS).map(move |point| (hash_of((&instance.address, point)), i))
            })
            .collect();
        ring.sort_unstable();
        Pool {
            name: name.to_owned(),
            instances,
            config,
            next: AtomicUsize::new(0),
            ring,
            retry_tokens: Mutex::new(RETRY_BURST),
        }
    }

    /// Takes over from `old` (the same pool before a reload) the instances at
    /// the same addresses: their health, breaker, latency average and
    /// requests in flight go on as if nothing had changed.
    pub(crate) fn keep_instances_of(&mut self, old: &Pool) {
        for instance in &mut self.instances {
            if let Some(same) = old.instances.iter().find(|o| o.address == instance.address) {
                *instance = same.clone();
            }
        }
    }

    /// Picks an instance for a request from `client`, not among `tried`, by
    /// the pool's policy; `None` when no instance can take it.
    pub(crate) fn pick(&self, client: IpAddr, tried: &[usize]) -> Option<usize> {
        let now = Instant::now();
        let candidate = |i: &usize| !tried.contains(i) && self.instances[*i].available(now);
        let n = self.instances.len();
        let chosen = match self.config.balance {
            Balance::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|k| (start + k) % n).find(|i| candidate(i))
            }
            Balance::LeastConnections => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|i| candidate(i))
                    .min_by_key(|i| self.instances[*i].in_flight.load(Ordering::Relaxed))
            }
            Balance::PeakEwma => {
                let open: Vec<usize> = (0..n).filter(|i| candidate(i)).collect();
                match open.len() {
                    0 => None,
                    1 => Some(open[0]),
                    len => {
                        let a = open[fastrand::usize(..len)];
                        let mut b = open[fastrand::usize(..len - 1)];
                        if b == a {
                            b = open[len - 1];
                        }
                        let (ca, cb) = (self.instances[a].cost(), self.instances[b].cost());
                        Some(if ca <= cb { a } else { b })
                    }
                }
            }
            Balance::IpHash => {
                let point = hash_of(client);
                let start = self.ring.partition_point(|(p, _)| *p < point);
                (0..self.ring.len())
                    .map(|k| self.ring[(start + k) % self.ring.len()].1)
                    .find(|i| candidate(i))
            }
        }?;
        // Takes the half-open probe slot, if that is what lets it through; a
        // concurrent request may have taken it first.
        self.instances[chosen].admit(now).then_some(chosen)
    }

    /// Whether any instance could take a request now.
    pub(crate) fn any_available(&self) -> bool {
        let now = Instant::now();
        self.instances.iter().any(|i| i.available(now))
    }

    /// A request was sent: the retry budget grows by `budget_ratio`.
    pub(crate) fn deposit(&self) {
        let mut tokens = lock(&self.retry_tokens);
        *tokens = (*tokens + self.config.retry.budget_ratio).min(RETRY_BURST);
    }

    /// Takes one retry from the budget, if there is one.
    pub(crate) fn withdraw(&self) -> bool {
        let mut tokens = lock(&self.retry_tokens);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(balance: Balance, n: usize) -> Pool {
        let config = UpstreamConfig {
            addresses: (0..n)
                .map(|i| format!("http://10.0.0.{}:8080", i + 1))
                .collect(),
            balance,
            connect_timeout_ms: 1000,
            request_timeout_ms: 1000,
            health: Default::default(),
            breaker: BreakerConfig {
                consecutive_failures: 2,
                open_ms: 50,
            },
            retry: Default::default(),
        };
        Pool::new("test", config)
    }

    fn client(i: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(0x0a01_0000 + i))
    }

    #[test]
    fn round_robin_takes_each_in_turn_and_skips_the_tried() {
        let p = pool(Balance::RoundRobin, 3);
        let picks: Vec<_> = (0..6)
            .map(|_| p.pick(client(1), &[]).expect("one"))
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        assert_eq!(p.pick(client(1), &[0, 1]), Some(2));
        assert_eq!(p.pick(client(1), &[0, 1, 2]), None);
    }

    #[test]
    fn least_connections_picks_the_least_busy() {
        let p = pool(Balance::LeastConnections, 3);
        let _a = p.instances[0].start();
        let _b = p.instances[0].start();
        let _c = p.instances[2].start();
        for _ in 0..5 {
            assert_eq!(p.pick(client(1), &[]), Some(1));
        }
    }

    #[test]
    fn peak_ewma_prefers_the_faster_instance() {
        let p = pool(Balance::PeakEwma, 2);
        p.instances[0].succeeded(Duration::from_millis(50));
        p.instances[1].succeeded(Duration::from_millis(1));
        for _ in 0..20 {
            assert_eq!(p.pick(client(1), &[]), Some(1));
        }
    }

    #[test]
    fn ip_hash_keeps_clients_in_place_and_moves_only_those_of_a_removed_instance() {
        let before = pool(Balance::IpHash, 4);
        let placed: Vec<_> = (0..1000)
            .map(|c| before.pick(client(c), &[]).expect("one"))
            .collect();
        let again: Vec<_> = (0..1000)
            .map(|c| before.pick(client(c), &[]).expect("one"))
            .collect();
        assert_eq!(placed, again, "the same client, the same instance");
        for i in 0..4 {
            let share = placed.iter().filter(|p| **p == i).count();
            assert!(
                (150..=350).contains(&share),
                "instance {i} has {share} of 1000 clients"
            );
        }
        // Instance 3 leaves the pool: the ring of the other three.
        let mut config = before.config.clone();
        config.addresses.truncate(3);
        let after = Pool::new("test", config);
        for c in 0..1000 {
            let now = after.pick(client(c), &[]).expect("one");
            if placed[c as usize] != 3 {
                assert_eq!(
                    now, placed[c as usize],
                    "client {c} moved though its instance stayed"
                );
            }
        }
    }

    #[test]
    fn the_breaker_opens_after_failures_in_a_row_and_one_probe_closes_it() {
        let p = pool(Balance::RoundRobin, 1);
        let breaker = p.config.breaker.clone();
        p.instances[0].failed(&breaker);
        assert!(matches!(
            p.instances[0].breaker(),
            Breaker::Closed { failures: 1 }
        ));
        p.instances[0].failed(&breaker);
        assert!(matches!(p.instances[0].breaker(), Breaker::Open { .. }));
        assert_eq!(p.pick(client(1), &[]), None, "open: passed over");
        assert!(!p.any_available());
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(p.pick(client(1), &[]), Some(0), "half-open: one probe");
        assert_eq!(p.pick(client(1), &[]), None, "only one probe at a time");
        p.instances[0].succeeded(Duration::from_millis(1));
        assert_eq!(p.instances[0].breaker(), Breaker::Closed { failures: 0 });
        assert_eq!(p.pick(client(1), &[]), Some(0));
    }

    #[test]
    fn an_unhealthy_instance_is_out_until_its_check_passes() {
        let p = pool(Balance::RoundRobin, 2);
        p.instances[0].set_healthy(false);
        for _ in 0..4 {
            assert_eq!(p.pick(client(1), &[]), Some(1));
        }
        p.instances[0].set_healthy(true);
        let picks: Vec<_> = (0..4)
            .map(|_| p.pick(client(1), &[]).expect("one"))
            .collect();
        assert!(picks.contains(&0));
    }

    #[test]
    fn the_retry_budget_allows_a_share_of_the_requests() {
        let p = pool(Balance::RoundRobin, 2);
        let mut allowed = 0;
        for _ in 0..100 {
            p.deposit();
            if p.withdraw() {
                allowed += 1;
            }
        }
        // The initial burst of 10, then one per five requests.
        assert!((25..=35).contains(&allowed), "{allowed}");
    }
}
