//! Test support (feature `test-support`): the simulated provider with faults
//! injected into chosen calls, for the failure paths of payments and of the
//! checkout. Every call still goes to the real simulated provider unless a fault
//! stops it first.

use std::sync::{Mutex, PoisonError};

use agora_kernel::Money;
use async_trait::async_trait;

use crate::provider::{
    Authorization, PaymentProvider, ProviderError, SimulatedBehaviour, SimulatedProvider,
};

/// What a provider call suffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fails before doing anything.
    Unavailable,
    /// Does the work, then the answer is lost (a timeout after the fact).
    LostAnswer,
    /// Refuses the call.
    Refused,
}

/// A kind of provider call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `authorize`.
    Authorize,
    /// `capture`.
    Capture,
    /// `void`.
    Void,
    /// `cancel_authorization`.
    CancelAuthorization,
    /// `refund`.
    Refund,
}

/// Faults waiting: for any call (`None`) or one kind, how many calls more.
type Planned = Vec<(Option<Call>, Fault, u32)>;

/// The simulated provider, with faults injected on request, counting calls.
pub struct FaultyProvider {
    inner: SimulatedProvider,
    faults: Mutex<Planned>,
    calls: Mutex<Vec<Call>>,
}

impl FaultyProvider {
    /// A simulated provider behaving as `behaviour` says, keeping its books
    /// in `db` (the payments database, migrated), with no fault yet.
    pub fn new(behaviour: SimulatedBehaviour, db: agora_platform::Database) -> Self {
        Self {
            inner: SimulatedProvider::new(behaviour, db),
            faults: Mutex::new(Vec::new()),
            calls: Mutex::new(Vec::new()),
        }
    }

    /// The next provider calls, whatever they are, suffer `faults` in order.
    pub fn fail_next(&self, faults: &[Fault]) {
        let mut planned = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
        planned.extend(faults.iter().map(|f| (None, *f, 1)));
    }

    /// The next `times` calls of `call` suffer `fault` (after faults planned
    /// earlier for them).
    pub fn fail(&self, call: Call, fault: Fault, times: u32) {
        let mut planned = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
        planned.push((Some(call), fault, times));
    }

    /// How many calls of `call` were made (faulty ones included).
    pub fn calls(&self, call: Call) -> usize {
        let calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        calls.iter().filter(|c| **c == call).count()
    }

    /// Records `call` and takes the fault due for it, if any.
    fn due(&self, call: Call) -> Option<Fault> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(call);
        let mut planned = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
        let (_, fault, left) = planned
            .iter_mut()
            .find(|(c, _, left)| *left > 0 && c.is_none_or(|c| c == call))?;
        *left -= 1;
        Some(*fault)
    }

    async fn run<T>(
        &self,
        call: Call,
        work: impl Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        match self.due(call) {
            None => work.await,
            Some(Fault::Unavailable) => Err(ProviderError::Unavailable("injected outage".into())),
            Some(Fault::Refused) => Err(ProviderError::Refused("injected refusal".into())),
            Some(Fault::LostAnswer) => {
                let _ = work.await;
                Err(ProviderError::Timeout)
            }
        }
    }
}

#[async_trait]
impl PaymentProvider for FaultyProvider {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn authorize(
        &self,
        key: &str,
        payment_token: &str,
        amount: Money,
    ) -> Result<Authorization, ProviderError> {
        self.run(
            Call::Authorize,
            self.inner.authorize(key, payment_token, amount),
        )
        .await
    }

    async fn capture(
        &self,
        key: &str,
        provider_ref: &str,
        amount: Money,
    ) -> Result<(), ProviderError> {
        self.run(Call::Capture, self.inner.capture(key, provider_ref, amount))
            .await
    }

    async fn void(&self, key: &str, provider_ref: &str) -> Result<(), ProviderError> {
        self.run(Call::Void, self.inner.void(key, provider_ref))
            .await
    }

    async fn cancel_authorization(&self, key: &str) -> Result<(), ProviderError> {
        self.run(
            Call::CancelAuthorization,
            self.inner.cancel_authorization(key),
        )
        .await
    }

    async fn refund(
        &self,
        key: &str,
        provider_ref: &str,
        amount: Money,
    ) -> Result<(), ProviderError> {
        self.run(Call::Refund, self.inner.refund(key, provider_ref, amount))
            .await
    }
}
