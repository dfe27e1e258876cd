//! Concurrency caps (`max_in_flight`) shared by the instances of a team
//! gateway, and the hold a capped account's answer keeps on its slot.
//!
//! The pool caps an account locally (it never picks an account at its cap);
//! [`SharedSlots`], filled by the binary with a Redis-backed implementation,
//! makes the cap hold across every instance: before a capped account is
//! sent to, the driver takes a shared slot, and an account whose shared
//! slots are all held elsewhere is reported to the machine as busy
//! (`Rotation::on_busy`). Only capped accounts pay the round trip; the
//! others never reach this module. When the shared backend cannot answer,
//! the local cap is all there is (said once, loudly): a request never fails
//! because the backend is down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use marathon_core::AccountId;
use marathon_core::tokens::BoxFuture;

use crate::state::ProviderRuntime;

/// A slot held in the shared backend; dropping it gives the slot back.
pub type SharedSlot = Box<dyn std::any::Any + Send + Sync>;

/// The answer of [`SharedSlots::acquire`].
pub enum SlotAnswer {
    /// A slot is ours until the value is dropped.
    Held(SharedSlot),
    /// Every slot is held (by this or other instances).
    Full,
    /// The backend could not be asked; the local cap applies alone.
    Unavailable,
}

/// Concurrency slots shared by the instances of a team gateway.
pub trait SharedSlots: Send + Sync {
    /// Takes one of `account`'s `cap` slots, if one is free. Must answer
    /// quickly (a short timeout) even when the backend is down.
    fn acquire<'a>(&'a self, account: &'a AccountId, cap: u32) -> BoxFuture<'a, SlotAnswer>;
}

/// Says once that the shared cap could not be checked, and once that it can be again.
#[derive(Default)]
pub(crate) struct Outage(AtomicBool);

impl Outage {
    pub(crate) fn note(&self, answer: &SlotAnswer) {
        let down = matches!(answer, SlotAnswer::Unavailable);
        if self.0.swap(down, Ordering::Relaxed) != down {
            if down {
                tracing::error!(
                    "the shared store cannot be reached for concurrency slots: max_in_flight is enforced per instance only until it is back"
                );
            } else {
                tracing::warn!("concurrency slots are shared across instances again");
            }
        }
    }
}

/// A capped account's slot, held by its answer's body until the body ends
/// or is dropped: the pool's slot (ended with one `Pool::release`) and the
/// shared one, if any.
pub(crate) struct SlotHold {
    rt: Arc<ProviderRuntime>,
    account: AccountId,
    _shared: Option<SharedSlot>,
}

impl SlotHold {
    pub(crate) fn new(
        rt: Arc<ProviderRuntime>,
        slot: marathon_core::rotation::StreamSlot,
        shared: Option<SharedSlot>,
    ) -> Self {
        SlotHold {
            rt,
            account: slot.account,
            _shared: shared,
        }
    }
}

impl Drop for SlotHold {
    fn drop(&mut self) {
        self.rt
            .pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .release(&self.account);
    }
}
