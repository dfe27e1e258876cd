//! The seam through which a driver gets OAuth access tokens. Declared here,
//! with no I/O of its own, so that both of marathon's faces (the proxy and
//! the client middleware) take the same token source; `marathon-oauth`'s
//! `Refresher` implements it (single-flight, cross-process refresh).

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use crate::account::AccountId;
use crate::reason::Reason;
use crate::rotation::RefreshFailure;
use crate::secret::Secret;

/// A boxed future (object-safe async trait methods).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Hands out OAuth access tokens, refreshing them as needed.
pub trait TokenSource: Send + Sync {
    /// A currently valid access token for the account.
    fn access_token<'a>(
        &'a self,
        account: &'a AccountId,
    ) -> BoxFuture<'a, Result<Secret, TokenError>>;
    /// The upstream rejected `rejected` (401): refresh unless someone already did.
    fn force_refresh<'a>(
        &'a self,
        account: &'a AccountId,
        rejected: &'a Secret,
    ) -> BoxFuture<'a, Result<Secret, TokenError>>;
}

/// Why no token could be had. The reason goes into events and the status
/// view, so it is a [`Reason`]: a token endpoint's free text cannot get there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenError {
    /// The grant is gone (`invalid_grant`, reused or revoked refresh token): log in again.
    Permanent(Reason),
    /// Try again later (network, 5xx).
    Transient(Reason),
}

impl TokenError {
    /// The failure as the rotation machine takes it.
    pub fn as_failure(&self) -> RefreshFailure<'_> {
        match self {
            TokenError::Permanent(reason) => RefreshFailure {
                permanent: true,
                reason,
            },
            TokenError::Transient(reason) => RefreshFailure {
                permanent: false,
                reason,
            },
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Permanent(r) => write!(f, "refresh failed permanently: {r}"),
            TokenError::Transient(r) => write!(f, "refresh failed for now: {r}"),
        }
    }
}

impl std::error::Error for TokenError {}
