//! The HTTP request path, read top to bottom: admit (a token of the local limit, then of the
//! global one: from the shared store when there is one, else from this instance's share) →
//! check the body size → rewrite for the application → forward over a pooled connection,
//! within the upstream timeout → rewrite for the client and relay the application's body.
//! Every answer the proxy gives itself comes from [`error_response`].

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::uri::PathAndQuery;
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use http_body_util::{BodyExt, Either, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use meshlimit_bucket::{Clock, Decision};
use meshlimit_policy::effective::{FailureMode, GlobalMode};
use tokio::net::TcpStream;

use crate::error::{
    ClientBodyError, ProxyBody, RequestError, add_rate_limit_headers, error_chain, error_response,
    is_body_limit, is_client_body,
};
use crate::inbound::{Inbound, Source};
use crate::options::{ProxyOptions, RateLimitHeaders};
use crate::plan::{GlobalPlan, InboundPlan, QuotaPolicy};
use crate::store::{SharedBuckets, SharedError};
use crate::upstream::{ExchangeError, Lease, UpstreamBody};

/// What the client receives: the application's response, relayed, or one of ours.
type ToClient = ProxyBody<Relayed>;

/// Shared by every HTTP connection of a proxy: the server configuration and the clock
/// buckets are read with. (Upstream connections are pooled per inbound, in [`Inbound`].)
pub(crate) struct HttpContext {
    server: auto::Builder<TokioExecutor>,
    clock: Arc<dyn Clock>,
    body_limit: Option<u64>,
    rate_limit_headers: RateLimitHeaders,
    upstream_timeout: Duration,
    request_headers_timeout: Duration,
    idle_timeout: Duration,
    forward_connect: bool,
    shared: Option<Arc<dyn SharedBuckets>>,
}

impl HttpContext {
    pub(crate) fn new(options: &ProxyOptions, clock: Arc<dyn Clock>) -> HttpContext {
        let mut server = auto::Builder::new(TokioExecutor::new());
        server
            .http1()
            .timer(TokioTimer::new())
            .keep_alive(true)
            .max_buf_size(options.max_request_header_bytes.max(8192))
            .max_headers(options.max_request_headers)
            // Off (hyper's default is 30 s): `Activity` bounds the first head (the request
            // headers timeout) and a keep-alive connection's idle time, a later head trickled
            // byte by byte included (no request is in flight until its head is complete).
            // hyper's timer would be a second, racing deadline, and costs a boxed timer per
            // request.
            .header_read_timeout(None)
            // One buffer, the body copied behind the head: a response is one `write` of it
            // either way (`writev` otherwise), and hyper's queue of buffers costs more
            // instructions than copying the small bodies of most answers.
            .writev(false);
        server
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(
                u32::try_from(options.max_request_header_bytes).unwrap_or(u32::MAX),
            );
        HttpContext {
            server,
            clock,
            body_limit: options.max_request_body_bytes,
            rate_limit_headers: options.rate_limit_headers,
            upstream_timeout: options.upstream_timeout,
            request_headers_timeout: options.request_headers_timeout,
            idle_timeout: options.idle_timeout,
            forward_connect: options.forward_connect,
            shared: options.shared.clone(),
        }
    }
}

/// How long a connection closed for being idle may take to finish (HTTP/2: after GOAWAY).
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// One accepted client connection: HTTP/1.1 or HTTP/2 (detected from the first bytes), served
/// until the client leaves, or until the inbound stops, in which case in-flight requests finish.
/// A connection that brings no request in time, or stays idle, is closed.
pub(crate) async fn serve_connection(
    stream: TcpStream,
    inbound: Arc<Inbound>,
    ctx: Arc<HttpContext>,
) {
    let _ = stream.set_nodelay(true);
    let stop = inbound.stop.clone();
    let activity = Arc::new(Activity::new());
    let conn = Arc::new((
        Arc::clone(&inbound),
        Arc::clone(&ctx),
        Arc::clone(&activity),
    ));
    let service = service_fn(move |request| {
        let (inbound, ctx, activity) = &*conn;
        let started_ns = inbound.latency_clock.now_ns();
        match begin(request, inbound, ctx) {
            // Answered at once: no future to keep, nothing boxed, and the request is over.
            Begun::Answered(response) => {
                activity.answered();
                inbound
                    .counters
                    .responses
                    .count(Source::Proxy, response.status());
                let ns = inbound.latency_clock.now_ns().saturating_sub(started_ns);
                inbound.counters.request_duration.record(ns);
                Served::Ready(Some(response))
            }
            Begun::Later(later) => {
                let active = Active::start(activity);
                let conn = Arc::clone(&conn);
                Served::Pending(Box::pin(async move {
                    let inbound = &conn.0;
                    let response = match later {
                        Later::Forward(forwarding) => finish(forwarding, inbound, &conn.1).await,
                        Later::AskStore(request) => {
                            handle_with_store(request, inbound, &conn.1).await
                        }
                    };
                    relay(response, active, started_ns, inbound)
                }))
            }
        }
    });
    let connection = ctx.server.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
        timeout = activity.expired(ctx.request_headers_timeout, ctx.idle_timeout) => {
            count_timeout(&inbound, timeout);
            match timeout {
                // Nothing to finish: no request has arrived.
                Timeout::RequestHeaders => return,
                Timeout::Idle => {
                    connection.as_mut().graceful_shutdown();
                    match tokio::time::timeout(IDLE_CLOSE_GRACE, connection).await {
                        Ok(result) => result,
                        Err(_elapsed) => return,
                    }
                }
            }
        }
    };
    if let Err(error) = result {
        count_refused_head(&inbound, error.as_ref());
        tracing::debug!(error = %error_chain(error.as_ref()), "client connection ended with an error");
    }
}

/// The future hyper keeps for a request (for HTTP/2, moved into a task of its own): an answer
/// ready at once, or the boxed exchange with the application, so that it stays two words
/// large whatever forwarding needs.
// The ready answer is what hyper takes out of this future anyway: boxing it would only add an
// allocation.
#[allow(clippy::large_enum_variant)]
enum Served {
    Ready(Option<Response<ToClient>>),
    Pending(Pin<Box<dyn Future<Output = Response<ToClient>> + Send>>),
}

impl Future for Served {
    type Output = Result<Response<ToClient>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Served::Ready(response) => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                // hyper polls a request's future no more once it has answered.
                None => Poll::Pending,
            },
            Served::Pending(future) => future.as_mut().poll(cx).map(Ok),
        }
    }
}

/// A forwarded request's answer, counted: a relayed body keeps the request in flight until
/// it is sent, and its duration runs until then; one of the proxy's own ends it here.
fn relay(
    mut response: Response<ToClient>,
    active: Active,
    started_ns: u64,
    inbound: &Inbound,
) -> Response<ToClient> {
    let counters = &inbound.counters;
    let status = response.status();
    match response.body_mut() {
        Either::Left(body) => {
            counters.responses.count(Source::Application, status);
            body.active = Some(active);
            body.started_ns = started_ns;
        }
        Either::Right(_) => {
            counters.responses.count(Source::Proxy, status);
            let ns = inbound.latency_clock.now_ns().saturating_sub(started_ns);
            counters.request_duration.record(ns);
        }
    }
    response
}

/// hyper answers a request head it cannot parse itself (HTTP/1.1: 400, or 431 for one over
/// the size limit) and ends the connection with that error: counted here, as answers of the
/// proxy.
fn count_refused_head(inbound: &Inbound, error: &(dyn std::error::Error + 'static)) {
    let Some(error) = std::iter::successors(Some(error), |cause| cause.source())
        .find_map(|cause| cause.downcast_ref::<hyper::Error>())
    else {
        return;
    };
    let counters = &inbound.counters;
    if error.is_parse_too_large() {
        counters.heads_too_large.inc();
        counters
            .responses
            .count(Source::Proxy, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    } else if error.is_parse() {
        counters.malformed_heads.inc();
        counters
            .responses
            .count(Source::Proxy, StatusCode::BAD_REQUEST);
    }
}

fn count_timeout(inbound: &Inbound, timeout: Timeout) {
    match timeout {
        Timeout::RequestHeaders => {
            inbound.counters.request_headers_timeouts.inc();
            tracing::debug!(inbound = %inbound.key, "no request head in time; closing the connection");
        }
        Timeout::Idle => {
            inbound.counters.idle_timeouts.inc();
            tracing::debug!(inbound = %inbound.key, "idle timeout; closing the connection");
        }
    }
}

/// Which deadline of a connection passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timeout {
    /// No request arrived within the request headers timeout of the accept.
    RequestHeaders,
    /// No request was in flight for the idle timeout.
    Idle,
}

/// A connection's requests in flight and when it last had none: what its deadlines are
/// counted from. HTTP/2 pings and window updates do not count as activity, as in Envoy.
///
/// Requests only update counters; nothing is woken. The deadline's timer is armed once and,
/// when it fires, looks at what happened meanwhile and arms itself again if the connection was
/// not idle all along (as Envoy's and hyper's own timers do): a request costs two atomic
/// additions and a clock read, not a wake-up and two timer resets.
struct Activity {
    accepted: tokio::time::Instant,
    in_flight: AtomicUsize,
    seen_request: AtomicBool,
    /// When `in_flight` last fell to zero, in milliseconds since `accepted`.
    idle_since_ms: AtomicU64,
}

/// What a connection's state says about its deadline now.
enum Deadline {
    /// This deadline, unless a request comes first.
    At(tokio::time::Instant, Timeout),
    /// No deadline while a request is in flight (or, without a request headers deadline,
    /// until one arrives); an idle one follows. Only with an idle timeout.
    Busy,
    /// No deadline ever (the remaining one is disabled).
    Never,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            accepted: tokio::time::Instant::now(),
            in_flight: AtomicUsize::new(0),
            seen_request: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(0),
        }
    }

    /// Resolves when a deadline has passed with no request in flight; a zero duration is no
    /// deadline.
    async fn expired(&self, request_headers: Duration, idle: Duration) -> Timeout {
        loop {
            let now = tokio::time::Instant::now();
            let at = match self.deadline(request_headers, idle) {
                Deadline::At(at, timeout) if at <= now => return timeout,
                // A request that starts and ends meanwhile makes the connection idle from its
                // end, so no sooner than one idle timeout from now: looking again by then
                // misses no deadline.
                Deadline::At(at, _) if !idle.is_zero() => at.min(now + idle),
                Deadline::At(at, _) => at,
                Deadline::Busy => now + idle,
                Deadline::Never => std::future::pending().await,
            };
            tokio::time::sleep_until(at).await;
        }
    }

    fn deadline(&self, request_headers: Duration, idle: Duration) -> Deadline {
        let seen_request = self.seen_request.load(Ordering::Acquire);
        if self.in_flight.load(Ordering::Acquire) > 0
            || (!seen_request && request_headers.is_zero())
        {
            if idle.is_zero() {
                Deadline::Never
            } else {
                Deadline::Busy
            }
        } else if !seen_request {
            Deadline::At(self.accepted + request_headers, Timeout::RequestHeaders)
        } else if idle.is_zero() {
            Deadline::Never
        } else {
            let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
            Deadline::At(self.accepted + since + idle, Timeout::Idle)
        }
    }
}

impl Activity {
    /// A request answered as it arrived: the connection is idle again from now, as if an
    /// [`Active`] had started and ended.
    fn answered(&self) {
        let since = u64::try_from(self.accepted.elapsed().as_millis()).unwrap_or(u64::MAX);
        // Before the request is seen: a timer that sees a request sees its end too.
        self.idle_since_ms.fetch_max(since, Ordering::AcqRel);
        if !self.seen_request.load(Ordering::Relaxed) {
            self.seen_request.store(true, Ordering::Release);
        }
    }
}

/// A request in flight on its connection, until dropped.
struct Active(Arc<Activity>);

impl Active {
    fn start(activity: &Arc<Activity>) -> Active {
        if !activity.seen_request.load(Ordering::Relaxed) {
            activity.seen_request.store(true, Ordering::Release);
        }
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        Active(Arc::clone(activity))
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        let activity = &self.0;
        let since = u64::try_from(activity.accepted.elapsed().as_millis()).unwrap_or(u64::MAX);
        // Before the count falls: a timer that sees no request in flight sees this end too.
        activity.idle_since_ms.fetch_max(since, Ordering::AcqRel);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the first, synchronous step made of a request.
enum Begun {
    /// The proxy's own answer (a rejection, a refused request), decided without waiting.
    Answered(Response<ToClient>),
    /// What is left needs waiting.
    Later(Later),
}

/// A request's steps that wait, in its boxed future.
enum Later {
    /// Admitted: to the application.
    Forward(Forward),
    /// The inbound has a global limit and the proxy a shared store: admission waits for it.
    AskStore(Request<Incoming>),
}

/// An admitted request, rewritten for the application, and the admission's answer for the
/// rate-limit header fields.
struct Forward {
    request: Request<UpstreamBody>,
    upstream: std::net::SocketAddr,
    rate_limit: Option<(Arc<QuotaPolicy>, Decision)>,
}

/// One request, one token of each limit of the inbound: everything that needs no waiting
/// (without a shared store, the whole admission) is done here, before any future exists.
fn begin(request: Request<Incoming>, inbound: &Inbound, ctx: &HttpContext) -> Begun {
    if request.method() == Method::CONNECT && !ctx.forward_connect {
        inbound.counters.connect_refused.inc();
        return Begun::Answered(error_response(RequestError::Connect, request.version()));
    }
    let plan = inbound.plan.load();
    if ctx.shared.is_some() && plan.global.is_some() {
        return Begun::Later(Later::AskStore(request));
    }
    let admitted = match admit_now(&plan, ctx) {
        Ok(admitted) => admitted,
        Err(error) => return Begun::Answered(error_response(error, request.version())),
    };
    match after_admission(request, &plan, admitted, inbound, ctx) {
        Ok(forwarding) => Begun::Later(Later::Forward(forwarding)),
        Err(response) => Begun::Answered(response),
    }
}

/// The same steps as [`begin`] and [`finish`], for an inbound whose global limit asks the
/// shared store. The plan is held by its reference count while the store is awaited, as a
/// guard is meant for short reads.
async fn handle_with_store(
    request: Request<Incoming>,
    inbound: &Arc<Inbound>,
    ctx: &HttpContext,
) -> Response<ToClient> {
    let plan = inbound.plan.load_full();
    let forwarding = {
        let admitted = match (&ctx.shared, &plan.global) {
            (Some(store), Some(global)) => {
                admit_with_store(&plan, global, inbound, ctx, store.as_ref()).await
            }
            // The plan changed meanwhile: no store to ask any more.
            _ => admit_now(&plan, ctx),
        };
        let admitted = match admitted {
            Ok(admitted) => admitted,
            Err(error) => return error_response(error, request.version()),
        };
        match after_admission(request, &plan, admitted, inbound, ctx) {
            Ok(forwarding) => forwarding,
            Err(response) => return response,
        }
    };
    finish(forwarding, inbound, ctx).await
}

/// Phase 2 and 3 for an admitted request: its body size, then its rewriting.
// The proxy's answer is returned as the response it is (see `Served`).
#[allow(clippy::result_large_err)]
fn after_admission(
    request: Request<Incoming>,
    plan: &InboundPlan,
    admitted: Admitted<'_>,
    inbound: &Inbound,
    ctx: &HttpContext,
) -> Result<Forward, Response<ToClient>> {
    let rate_limit = if ctx.rate_limit_headers == RateLimitHeaders::Off {
        None
    } else {
        admitted.closest()
    };
    if let Err(error) = check_body(&request, ctx.body_limit) {
        return Err(local_after_admission(error, inbound, &rate_limit, ctx));
    }
    Ok(Forward {
        request: to_upstream(request, plan, ctx.body_limit),
        upstream: plan.upstream,
        rate_limit,
    })
}

/// Phases 4 and 5: the exchange with the application, and its response on the way back.
async fn finish(
    forwarding: Forward,
    inbound: &Arc<Inbound>,
    ctx: &HttpContext,
) -> Response<ToClient> {
    let Forward {
        request,
        upstream,
        rate_limit,
    } = forwarding;
    match forward(request, upstream, inbound, ctx).await {
        Ok((mut response, lease)) => {
            add_admission_headers(response.headers_mut(), &rate_limit, ctx);
            to_downstream(response, lease, inbound)
        }
        Err(error) => local_after_admission(error, inbound, &rate_limit, ctx),
    }
}

/// The proxy's own answer to an admitted request it could not forward (413, 400, 503, 504):
/// counted by reason, and with the rate-limit header fields of the admission, as every
/// answer of a limited inbound has them.
fn local_after_admission(
    error: RequestError<'_>,
    inbound: &Inbound,
    rate_limit: &Option<(Arc<QuotaPolicy>, Decision)>,
    ctx: &HttpContext,
) -> Response<ToClient> {
    let counters = &inbound.counters;
    match error {
        RequestError::BodyTooLarge => counters.bodies_too_large.inc(),
        RequestError::BadRequestBody => counters.malformed_bodies.inc(),
        RequestError::UpstreamUnavailable => counters.upstream_unavailable.inc(),
        _ => {}
    }
    // None of these answers is a rejection's template: the version changes nothing.
    let mut response = error_response(error, Version::HTTP_11);
    add_admission_headers(response.headers_mut(), rate_limit, ctx);
    response
}

/// The rate-limit header fields of an admitted request's answer, when they are on.
fn add_admission_headers(
    headers: &mut HeaderMap,
    rate_limit: &Option<(Arc<QuotaPolicy>, Decision)>,
    ctx: &HttpContext,
) {
    if let Some((quota, decision)) = rate_limit {
        add_rate_limit_headers(headers, ctx.rate_limit_headers, quota, decision, false);
    }
}

/// A bucket's answer to an admitted request and the bucket, for the rate-limit header fields.
type Answer<'p> = (&'p Arc<QuotaPolicy>, Decision);

/// What the limits enforced on an admitted request answered (`None`: no such limit, or one
/// that decided without a bucket, or one in `Shadow` mode, which the client is not told of).
struct Admitted<'p> {
    local: Option<Answer<'p>>,
    global: Option<Answer<'p>>,
}

impl Admitted<'_> {
    /// The answer closest to a rejection (the local one on a tie), as the header fields name
    /// one policy.
    fn closest(self) -> Option<(Arc<QuotaPolicy>, Decision)> {
        let closest = match (self.local, self.global) {
            (Some(local), Some(global)) if global.1.remaining() < local.1.remaining() => {
                Some(global)
            }
            (local, global) => local.or(global),
        };
        closest.map(|(quota, decision)| (Arc::clone(quota), decision))
    }
}

/// Phase 1: a token of the local limit (`MeshRateLimit`), then, for the requests it admits,
/// of the global one (`MeshGlobalRateLimit`), in the order of Envoy's local and global rate
/// limit filters; without a shared store, the global limit takes from this instance's share,
/// so nothing waits.
fn admit_now<'p>(
    plan: &'p InboundPlan,
    ctx: &HttpContext,
) -> Result<Admitted<'p>, RequestError<'p>> {
    let local = admit_local(plan, ctx)?;
    let global = match &plan.global {
        Some(global) => enforce(global, local_share(global, ctx), ctx)?,
        None => None,
    };
    Ok(Admitted { local, global })
}

/// Phase 1 with a shared store: the global limit's token comes from the store.
async fn admit_with_store<'p>(
    plan: &'p InboundPlan,
    global: &'p GlobalPlan,
    inbound: &Inbound,
    ctx: &HttpContext,
    store: &dyn SharedBuckets,
) -> Result<Admitted<'p>, RequestError<'p>> {
    let local = admit_local(plan, ctx)?;
    let verdict = match ask_store(global, store).await {
        Ok(decision) => {
            store_answered(inbound);
            Verdict {
                decision,
                quota: Some(&global.total_quota),
            }
        }
        Err(failure) => fall_back(global, inbound, ctx, &failure),
    };
    let global = enforce(global, verdict, ctx)?;
    Ok(Admitted { local, global })
}

/// Phase 1a: one token of the inbound's own bucket, if it has one.
fn admit_local<'p>(
    plan: &'p InboundPlan,
    ctx: &HttpContext,
) -> Result<Option<Answer<'p>>, RequestError<'p>> {
    let Some(http) = &plan.http else {
        plan.local_counters.allowed.inc();
        return Ok(None);
    };
    let decision = http.bucket.check(ctx.clock.now_ns());
    if decision.admitted() {
        plan.local_counters.allowed.inc();
        Ok(Some((&http.quota, decision)))
    } else {
        plan.local_counters.limited.inc();
        Err(RequestError::RateLimited {
            reject: &http.reject,
            quota: &http.quota,
            decision,
            rate_limit_headers: ctx.rate_limit_headers,
        })
    }
}

/// The global limit's decision, and the bucket that made it (`None` when the store failed
/// and the failure mode decided alone).
struct Verdict<'p> {
    decision: Decision,
    quota: Option<&'p Arc<QuotaPolicy>>,
}

/// Phase 1b: the global limit's verdict (one token of the total, from the store, or of this
/// instance's share without one) enforced. In `Shadow` mode a request the limit would reject
/// is counted and admitted.
fn enforce<'p>(
    global: &'p GlobalPlan,
    verdict: Verdict<'p>,
    ctx: &HttpContext,
) -> Result<Option<Answer<'p>>, RequestError<'p>> {
    let counters = &global.counters;
    match (verdict.decision.admitted(), global.mode) {
        (true, GlobalMode::Limit) => {
            counters.allowed.inc();
            Ok(verdict.quota.map(|quota| (quota, verdict.decision)))
        }
        (true, GlobalMode::Shadow) => {
            counters.allowed.inc();
            Ok(None)
        }
        (false, GlobalMode::Shadow) => {
            counters.shadow_limited.inc();
            Ok(None)
        }
        (false, GlobalMode::Limit) => {
            counters.limited.inc();
            Err(RequestError::RateLimited {
                reject: &global.reject,
                quota: verdict.quota.unwrap_or(&global.total_quota),
                decision: verdict.decision,
                rate_limit_headers: ctx.rate_limit_headers,
            })
        }
    }
}

fn local_share<'p>(global: &'p GlobalPlan, ctx: &HttpContext) -> Verdict<'p> {
    Verdict {
        decision: global.local_share.check(ctx.clock.now_ns()),
        quota: Some(&global.share_quota),
    }
}

/// Why the store gave no decision.
enum StoreFailure {
    Failed(SharedError),
    TimedOut(Duration),
}

impl std::fmt::Display for StoreFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreFailure::Failed(error) => f.write_str(&error_chain(error)),
            StoreFailure::TimedOut(timeout) => write!(f, "no answer within {timeout:?}"),
        }
    }
}

/// The store's answer within the limit's timeout; a store that does not answer in time is
/// dropped mid-check.
async fn ask_store(
    global: &GlobalPlan,
    store: &dyn SharedBuckets,
) -> Result<Decision, StoreFailure> {
    match tokio::time::timeout(global.timeout, store.check(&global.key, global.total)).await {
        Ok(answer) => answer.map_err(StoreFailure::Failed),
        Err(_elapsed) => Err(StoreFailure::TimedOut(global.timeout)),
    }
}

/// The failure mode decides a request the store could not: admit it, reject it (telling the
/// client to retry after one token of the total), or let this instance's share decide.
fn fall_back<'p>(
    global: &'p GlobalPlan,
    inbound: &Inbound,
    ctx: &HttpContext,
    failure: &StoreFailure,
) -> Verdict<'p> {
    let counters = &inbound.counters;
    counters.global_errors.inc();
    // One warning per outage; each failed check is in the counters.
    if !inbound.store_failing.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            inbound = %inbound.key,
            key = %global.key,
            failure_mode = ?global.failure_mode,
            error = %failure,
            "shared bucket store unavailable; the failure mode decides"
        );
    } else {
        tracing::debug!(inbound = %inbound.key, error = %failure, "shared bucket store failed");
    }
    match global.failure_mode {
        FailureMode::Open => {
            counters.global_fallbacks_open.inc();
            Verdict {
                decision: Decision::new(true, 0, Duration::ZERO),
                quota: None,
            }
        }
        FailureMode::Closed => {
            counters.global_fallbacks_closed.inc();
            Verdict {
                decision: Decision::new(false, 0, global.token_time),
                quota: None,
            }
        }
        FailureMode::LocalShare => {
            counters.global_fallbacks_local_share.inc();
            local_share(global, ctx)
        }
    }
}

fn store_answered(inbound: &Inbound) {
    // Read first: the flag is written only when an outage starts or ends.
    if inbound.store_failing.load(Ordering::Relaxed)
        && inbound.store_failing.swap(false, Ordering::Relaxed)
    {
        tracing::info!(inbound = %inbound.key, "shared bucket store answers again");
    }
}

/// Phase 2: a declared body larger than the limit is refused before anything is sent.
fn check_body(
    request: &Request<Incoming>,
    limit: Option<u64>,
) -> Result<(), RequestError<'static>> {
    match limit {
        Some(limit) if request.body().size_hint().lower() > limit => {
            Err(RequestError::BodyTooLarge)
        }
        _ => Ok(()),
    }
}

/// Phase 3: address the application over HTTP/1.1 in origin form (`CONNECT`: its address in
/// authority form), keep the client's `Host` (the target's authority when it has one:
/// HTTP/2's `:authority`, RFC 9113 §8.3.1, or an absolute-form target, RFC 9112 §3.2.2; the
/// application's address when the client sent neither), drop hop-by-hop headers, cap the body.
fn to_upstream(
    request: Request<Incoming>,
    plan: &InboundPlan,
    body_limit: Option<u64>,
) -> Request<UpstreamBody> {
    let (mut parts, body) = request.into_parts();
    let uri = std::mem::take(&mut parts.uri).into_parts();
    if let Some(value) = uri
        .authority
        .as_ref()
        .and_then(|a| HeaderValue::try_from(a.as_str()).ok())
    {
        parts.headers.insert(HOST, value);
    }
    remove_hop_by_hop(&mut parts.headers);
    if !parts.headers.contains_key(HOST) {
        parts.headers.insert(HOST, plan.upstream_host.clone());
    }
    parts.uri = if parts.method == Method::CONNECT {
        Uri::from(plan.upstream_authority.clone())
    } else {
        Uri::from(
            uri.path_and_query
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        )
    };
    parts.version = Version::HTTP_11;
    let limit = body_limit.map_or(usize::MAX, |limit| {
        usize::try_from(limit).unwrap_or(usize::MAX)
    });
    let body = body.map_err(ClientBodyError as fn(hyper::Error) -> ClientBodyError);
    Request::from_parts(parts, Limited::new(body, limit))
}

/// Phase 4: the exchange with the application, until its response head, within the upstream
/// timeout. A failure is the client's when its body could not be read (too large, or
/// malformed), the application's otherwise; each is logged here, once per request.
async fn forward(
    request: Request<UpstreamBody>,
    upstream: std::net::SocketAddr,
    inbound: &Inbound,
    ctx: &HttpContext,
) -> Result<(Response<Incoming>, Lease), RequestError<'static>> {
    let started_ns = inbound.latency_clock.now_ns();
    let exchange = inbound.upstream.send(upstream, request);
    let result = if ctx.upstream_timeout.is_zero() {
        exchange.await
    } else {
        // Dropping the exchange on time-out closes its upstream connection too: hyper's
        // client closes a connection whose response nobody awaits any more.
        match tokio::time::timeout(ctx.upstream_timeout, exchange).await {
            Ok(result) => result,
            Err(_elapsed) => {
                inbound.counters.upstream_timeouts.inc();
                tracing::warn!(
                    inbound = %inbound.key,
                    timeout = ?ctx.upstream_timeout,
                    "upstream request timeout: no response head in time"
                );
                return Err(RequestError::UpstreamTimeout);
            }
        }
    };
    if result.is_ok() {
        let ns = inbound.latency_clock.now_ns().saturating_sub(started_ns);
        inbound.counters.upstream_duration.record(ns);
    }
    result.map_err(|error: ExchangeError| {
        if is_body_limit(&error) {
            RequestError::BodyTooLarge
        } else if is_client_body(&error) {
            // The client's fault, seen on every malformed request: not a warning.
            tracing::info!(
                inbound = %inbound.key,
                error = %error_chain(&error),
                "client sent a bad request body"
            );
            RequestError::BadRequestBody
        } else {
            tracing::warn!(
                mesh = %inbound.key.mesh,
                dataplane = %inbound.key.dataplane,
                inbound = inbound.key.port,
                error = %error_chain(&error),
                "upstream unavailable"
            );
            RequestError::UpstreamUnavailable
        }
    })
}

/// Phase 5: the application's response goes back with hop-by-hop headers removed and, when
/// switched on, the IETF rate-limit header fields; its body is relayed as it arrives, and its
/// connection given back to the pool once the body has ended.
fn to_downstream(
    response: Response<Incoming>,
    lease: Lease,
    inbound: &Arc<Inbound>,
) -> Response<ToClient> {
    let (mut parts, body) = response.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    let body = Relayed {
        body,
        lease: Some(lease),
        inbound: Arc::clone(inbound),
        active: None,
        started_ns: 0,
        broken: None,
    };
    Response::from_parts(parts, Either::Left(body))
}

/// The application's response body on its way to the client. An application that breaks off
/// mid-body (closes before the declared length or the last chunk, resets) makes this body
/// fail rather than end: hyper then closes an HTTP/1.1 client connection without the end of
/// the message and resets an HTTP/2 stream, so the client cannot take a truncated body for a
/// whole one.
struct Relayed {
    body: Incoming,
    /// The upstream connection, given back once the body has ended (a body dropped before
    /// its end closes it: the rest of the response would be in the way of the next one).
    lease: Option<Lease>,
    inbound: Arc<Inbound>,
    /// The request stays in flight on its connection until its body is sent.
    active: Option<Active>,
    /// When the request arrived, on the inbound's latency clock: its duration is recorded
    /// when this body ends or is dropped.
    started_ns: u64,
    /// The application broke off: the error is held back for one poll, so that what came
    /// before it (the head, the first bytes) is flushed to the client before hyper aborts.
    broken: Option<hyper::Error>,
}

impl Relayed {
    fn give_back(&mut self) {
        if let Some(lease) = self.lease.take() {
            self.inbound.upstream.give_back(lease);
        }
    }
}

impl Body for Relayed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        // The upstream connection reads the body for it; polled before and, when the body
        // had nothing yet, once more after (asking for a frame is what lets it read on).
        let this = &mut *self;
        if let Some(error) = this.broken.take() {
            return Poll::Ready(Some(Err(error)));
        }
        if let Some(lease) = &mut this.lease {
            let _ = lease.poll_io(cx);
        }
        let mut polled = Pin::new(&mut this.body).poll_frame(cx);
        if polled.is_pending()
            && let Some(lease) = &mut this.lease
        {
            let _ = lease.poll_io(cx);
            polled = Pin::new(&mut this.body).poll_frame(cx);
        }
        match ready!(polled) {
            Some(Err(error)) => {
                // Counted once per response: the error is returned once, and hyper stops
                // polling a body that failed.
                this.lease = None;
                this.inbound.counters.upstream_resets.inc();
                tracing::warn!(
                    inbound = %this.inbound.key,
                    error = %error_chain(&error),
                    "upstream broke off the response body; aborting the client's response"
                );
                this.broken = Some(error);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            None => {
                this.give_back();
                Poll::Ready(None)
            }
            frame => Poll::Ready(frame),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Relayed {
    fn drop(&mut self) {
        // hyper drops a body without polling it again once it says it has ended.
        if self.body.is_end_stream() {
            self.give_back();
        }
        let counters = &self.inbound.counters;
        let ns = self
            .inbound
            .latency_clock
            .now_ns()
            .saturating_sub(self.started_ns);
        counters.request_duration.record(ns);
    }
}

/// RFC 9110 §7.6.1: `Connection`, the fields it names, and the classic hop-by-hop fields.
/// `TE: trailers` is kept (gRPC needs it), as Envoy does, and so is `Host`, whatever
/// `Connection` names: without it the request has no target (RFC 9112 §3.2).
///
/// Called twice per request: one pass over the names finds which hop-by-hop fields there are
/// (most requests carry none; most responses only `Connection: keep-alive`), and only those
/// are looked up again. A token of `Connection` that names one of them needs no lookup of its
/// own; any other is removed by its text, without building a name.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
    static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
    // Removed whenever present; the bit of each is its index.
    let fixed: [&HeaderName; 5] = [
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &TRAILER,
        &TRANSFER_ENCODING,
        &UPGRADE,
    ];
    const CONNECTION_BIT: u8 = 1 << 5;
    const TE_BIT: u8 = 1 << 6;
    let mut present = 0u8;
    for name in headers.keys() {
        present |= if name == CONNECTION {
            CONNECTION_BIT
        } else if name == TE {
            TE_BIT
        } else {
            fixed
                .iter()
                .position(|hop| name == *hop)
                .map_or(0, |at| 1 << at)
        };
    }
    if present == 0 {
        return;
    }
    if present & CONNECTION_BIT != 0 {
        // Taken out of the map (all its values), so that the map can be changed while they
        // are read.
        let (first, more): (Option<HeaderValue>, Vec<HeaderValue>) = match headers.entry(CONNECTION)
        {
            http::header::Entry::Occupied(entry) => {
                let mut values = entry.remove_entry_mult().1;
                (values.next(), values.collect())
            }
            http::header::Entry::Vacant(_) => (None, Vec::new()),
        };
        for token in first
            .iter()
            .chain(&more)
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
        {
            let kept_or_known = [TE.as_str(), HOST.as_str(), CONNECTION.as_str()]
                .into_iter()
                .chain(fixed.iter().map(|hop| hop.as_str()))
                .any(|name| token.eq_ignore_ascii_case(name));
            if !kept_or_known {
                // A token that is no valid field name names no field.
                let _ = headers.remove(token);
            }
        }
    }
    for (at, name) in fixed.into_iter().enumerate() {
        if present & (1 << at) != 0 {
            headers.remove(name);
        }
    }
    if present & TE_BIT != 0
        && let Some(te) = headers.get(TE)
        && !te.as_bytes().eq_ignore_ascii_case(b"trailers")
    {
        headers.remove(TE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(60);
    const REQUEST_HEADERS: Duration = Duration::from_secs(3600);

    /// How long after now `activity` expires, on tokio's paused clock, and which deadline.
    async fn expires_in(activity: &Activity, request_headers: Duration) -> (Duration, Timeout) {
        let start = tokio::time::Instant::now();
        let timeout = activity.expired(request_headers, IDLE).await;
        (start.elapsed(), timeout)
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_request_expires_at_the_request_headers_deadline() {
        let activity = Activity::new();
        assert_eq!(
            expires_in(&activity, REQUEST_HEADERS).await,
            (REQUEST_HEADERS, Timeout::RequestHeaders)
        );
        // Without that deadline, only a request's end starts a deadline.
        let activity = Arc::new(Activity::new());
        let waiting = tokio::time::timeout(10 * IDLE, activity.expired(Duration::ZERO, IDLE));
        assert!(waiting.await.is_err());
        drop(Active::start(&activity));
        assert_eq!(
            expires_in(&activity, Duration::ZERO).await,
            (IDLE, Timeout::Idle)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_deadline_runs_from_the_end_of_the_last_request_in_flight() {
        let activity = Arc::new(Activity::new());
        let expired = activity.expired(REQUEST_HEADERS, IDLE);
        tokio::pin!(expired);
        // The first request comes after a second, long before the request headers deadline,
        // and two overlap on the connection (HTTP/2) for ten idle timeouts.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let first = Active::start(&activity);
        let second = Active::start(&activity);
        assert!(
            tokio::time::timeout(5 * IDLE, expired.as_mut())
                .await
                .is_err()
        );
        drop(first);
        assert!(
            tokio::time::timeout(5 * IDLE, expired.as_mut())
                .await
                .is_err()
        );
        drop(second);
        let ended = tokio::time::Instant::now();
        assert_eq!(expired.await, Timeout::Idle);
        assert_eq!(ended.elapsed(), IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_came_and_went_moves_an_armed_deadline() {
        // Armed for the request headers deadline, an hour away: a request from 1 s to 2 s
        // makes the connection idle from 2 s, and the idle deadline a minute later applies.
        let activity = Arc::new(Activity::new());
        let expired = activity.expired(REQUEST_HEADERS, IDLE);
        tokio::pin!(expired);
        assert!(
            tokio::time::timeout(Duration::from_secs(1), expired.as_mut())
                .await
                .is_err()
        );
        let request = Active::start(&activity);
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(request);
        let ended = tokio::time::Instant::now();
        assert_eq!(expired.await, Timeout::Idle);
        assert_eq!(ended.elapsed(), IDLE);
    }

    #[test]
    fn hop_by_hop_headers_go_and_end_to_end_headers_stay() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(TE, HeaderValue::from_static("gzip"));
        headers.insert("x-end-to-end", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut headers);
        let left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-end-to-end"]);

        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_static("Host, close"));
        headers.insert(HOST, HeaderValue::from_static("backend.test"));
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers[HOST], "backend.test");

        let mut headers = HeaderMap::new();
        headers.insert(TE, HeaderValue::from_static("trailers"));
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers[TE], "trailers");

        // Several `Connection` fields, one token that is no field name.
        let mut headers = HeaderMap::new();
        headers.append(CONNECTION, HeaderValue::from_static("x-one"));
        headers.append(CONNECTION, HeaderValue::from_static("not a name, X-Two"));
        headers.insert("x-one", HeaderValue::from_static("1"));
        headers.insert("x-two", HeaderValue::from_static("2"));
        headers.insert("x-three", HeaderValue::from_static("3"));
        remove_hop_by_hop(&mut headers);
        let left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-three"]);

        // Tokens naming hop-by-hop fields in any case, one naming `TE` (kept as `trailers`),
        // and an ordinary field named `close`.
        let mut headers = HeaderMap::new();
        headers.insert(
            CONNECTION,
            HeaderValue::from_static("Keep-Alive, UPGRADE, te, close, connection"),
        );
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(UPGRADE, HeaderValue::from_static("h2c"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        headers.insert("close", HeaderValue::from_static("1"));
        headers.insert("x-end-to-end", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut headers);
        let mut left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["te", "x-end-to-end"]);

        // Nothing hop-by-hop: untouched.
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_static("backend.test"));
        headers.insert("x-end-to-end", HeaderValue::from_static("1"));
        let before = headers.clone();
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers, before);
    }
}
