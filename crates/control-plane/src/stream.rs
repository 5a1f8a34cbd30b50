//! The `?watch=true` streams: newline-delimited JSON, one [`StreamEvent`] per line. The first
//! line is the current state; then a `limits` line whenever the followed limits change, and a
//! `heartbeat` line when the store version moves without changing them or when nothing happened
//! for a while. Data planes tell a dead control plane from a quiet one by the heartbeats.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::sync::watch;

use crate::insights::StreamGuard;
use crate::state::ControlPlane;
use crate::store_state::StoreState;
use crate::wire::StreamEvent;

struct Follow<T, F> {
    rx: watch::Receiver<Arc<StoreState>>,
    select: F,
    last: Option<Option<T>>,
    heartbeat: Duration,
    _connected: StreamGuard,
}

impl<T, F> Follow<T, F>
where
    T: Serialize + PartialEq,
    F: Fn(&StoreState) -> Option<T>,
{
    async fn next_line(&mut self) -> Option<Bytes> {
        if self.last.is_some() {
            tokio::select! {
                changed = self.rx.changed() => changed.ok()?,
                () = tokio::time::sleep(self.heartbeat) => {
                    let version = self.rx.borrow().version;
                    return line(&StreamEvent::<T>::Heartbeat { version });
                }
            }
        }
        let snapshot = self.rx.borrow_and_update().clone();
        let limits = (self.select)(&snapshot);
        if self.last.as_ref() == Some(&limits) {
            return line(&StreamEvent::<T>::Heartbeat {
                version: snapshot.version,
            });
        }
        let event = StreamEvent::Limits {
            version: snapshot.version,
            limits,
        };
        let out = line(&event);
        if let StreamEvent::Limits { limits, .. } = event {
            self.last = Some(limits);
        }
        out
    }
}

fn line<T: Serialize>(event: &StreamEvent<T>) -> Option<Bytes> {
    let mut text = serde_json::to_vec(event).ok()?;
    text.push(b'\n');
    Some(Bytes::from(text))
}

fn respond<T, F>(follow: Follow<T, F>) -> Response
where
    T: Serialize + PartialEq + Send + 'static,
    F: Fn(&StoreState) -> Option<T> + Send + 'static,
{
    let lines = futures_util::stream::unfold(follow, |mut follow| async move {
        let line = follow.next_line().await?;
        Some((Ok::<_, Infallible>(line), follow))
    });
    let mut response = Body::from_stream(lines).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The effective limits of one dataplane (`null` while no Dataplane resource has that name).
pub(crate) fn dataplane(
    cp: &ControlPlane,
    heartbeat: Duration,
    mesh: String,
    name: String,
) -> Response {
    let connected = cp.insights().dataplane_connected(&mesh, &name);
    respond(Follow {
        rx: cp.subscribe(),
        select: move |s: &StoreState| s.effective(&mesh, &name).cloned(),
        last: None,
        heartbeat,
        _connected: connected,
    })
}

/// Every kernel limit (a kernel agent enforces all of them on its host).
pub(crate) fn kernel(cp: &ControlPlane, heartbeat: Duration, agent: Option<String>) -> Response {
    let name = agent.unwrap_or_else(|| "anonymous".to_string());
    let connected = cp.insights().agent_connected(&name);
    respond(Follow {
        rx: cp.subscribe(),
        select: |s: &StoreState| Some(s.kernel.clone()),
        last: None,
        heartbeat,
        _connected: connected,
    })
}
