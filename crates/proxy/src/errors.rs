//! Answers marathon writes itself, in the provider's own error format so
//! clients and SDKs show them properly. The content is shared with the
//! client middleware (`marathon_wire`); this only makes it a
//! response with the proxy's body type.

use http::{Response, StatusCode};
use marathon_core::ApiFlavor;
use marathon_core::decision::AttemptTrace;
use marathon_core::rotation::Refusal;
use marathon_wire::{self as wire, OwnAnswer};

use crate::body::ProxyBody;

fn response(answer: OwnAnswer) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(answer.body));
    *r.status_mut() = answer.status;
    *r.headers_mut() = answer.headers;
    r
}

/// A marathon-side failure (bad path, unreadable body, ...).
pub(crate) fn proxy_error(
    flavor: ApiFlavor,
    status: StatusCode,
    message: &str,
) -> Response<ProxyBody> {
    response(wire::own_error(flavor, status, message))
}

/// The rotation machine's own answer, with `retry-after` and the attempt trace.
pub(crate) fn refusal_response(
    flavor: ApiFlavor,
    provider: &str,
    refusal: &Refusal,
    trace: &AttemptTrace,
    audience: wire::Audience,
) -> Response<ProxyBody> {
    response(wire::refusal_answer(
        flavor, provider, refusal, trace, audience,
    ))
}
