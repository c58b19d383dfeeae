//! The live view, `tracemesh serve --http ADDR`: the HTML report of live detection's
//! latest picture, and server-sent events (`/events`) announcing each new one, on which
//! the page reloads. Read-only (GET only); a bearer token (`Authorization: Bearer` or
//! `?token=`) is required whenever one is configured, and `serve` configures one for any
//! address beyond loopback.
//!
//! [`LiveView`] is the hub: live detection publishes a [`MapView`] after each report
//! (rendered only while the view is enabled), HTTP clients watch it. [`route`] decides
//! what a request gets; [`serve`] is the small HTTP/1.1 server around it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::detect::MapView;

/// One generation of the live picture.
#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub html: String,
    pub view_json: String,
    pub diversions: usize,
    pub open: usize,
}

impl Snapshot {
    /// The server-sent event announcing this snapshot.
    pub fn event(&self) -> String {
        format!(
            "event: report\ndata: {{\"generation\":{},\"diversions\":{},\"open\":{}}}\n\n",
            self.generation, self.diversions, self.open
        )
    }
}

/// What live detection publishes to and HTTP clients watch.
#[derive(Debug)]
pub struct LiveView {
    enabled: AtomicBool,
    tx: watch::Sender<Arc<Snapshot>>,
    /// When the current snapshot was rendered.
    rendered_at: std::sync::Mutex<Option<std::time::Instant>>,
}

/// An unchanged picture (same episodes, same number open) is re-rendered at most this
/// often: positions and timelines still move, but rendering a big report on every batch
/// would hold up live detection.
const REFRESH_UNCHANGED: Duration = Duration::from_secs(30);

impl Default for LiveView {
    fn default() -> Self {
        Self::new()
    }
}

const WAITING: &str = concat!(
    "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
    "<title>tracemesh: live view</title></head><body>",
    "<p>Live detection has not reported yet (does <code>serve</code> have ",
    "<code>--adversary</code>?). This page reloads when it does.</p>",
    "<script>setTimeout(() => location.reload(), 5000);</script></body></html>\n"
);

impl LiveView {
    pub fn new() -> Self {
        LiveView {
            enabled: AtomicBool::new(false),
            tx: watch::Sender::new(Arc::new(Snapshot {
                generation: 0,
                html: WAITING.to_owned(),
                view_json: "null".to_owned(),
                diversions: 0,
                open: 0,
            })),
            rendered_at: std::sync::Mutex::new(None),
        }
    }

    /// Turns rendering on (`serve --http`); until then [`LiveView::publish`] costs nothing.
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Release);
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// Publishes live detection's latest picture as the next generation.
    pub fn publish(&self, view: &MapView<'_>) {
        if !self.is_enabled() {
            return;
        }
        let open = view.diversions.iter().filter(|d| d.active).count();
        {
            let mut at = self.rendered_at.lock().unwrap_or_else(|p| p.into_inner());
            let cur = self.tx.borrow();
            let same =
                cur.generation > 0 && cur.diversions == view.diversions.len() && cur.open == open;
            if same && at.is_some_and(|t| t.elapsed() < REFRESH_UNCHANGED) {
                return;
            }
            *at = Some(std::time::Instant::now());
        }
        let generation = self.tx.borrow().generation + 1;
        let title = "tracemesh: live diversions";
        let (html, json) = match (
            crate::report::render_live_html(view, title, generation),
            serde_json::to_string(view),
        ) {
            (Ok(h), Ok(j)) => (h, j),
            (Err(e), _) => {
                tracing::error!(error = %e, "live view not rendered");
                return;
            }
            (_, Err(e)) => {
                tracing::error!(error = %e, "live view not rendered");
                return;
            }
        };
        self.tx.send_replace(Arc::new(Snapshot {
            generation,
            html,
            view_json: json,
            diversions: view.diversions.len(),
            open,
        }));
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }
}

/// What a request gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Page,
    ViewJson,
    Events,
    /// Status line and a one-line body.
    Refuse(&'static str, &'static str),
}

/// Equal without an early exit, so that a token is not guessed byte by byte by timing.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Decides what the request whose head (request line and headers) is `head` gets, given
/// the token required (if any). Pure.
pub fn route(head: &str, token: Option<&str>) -> Route {
    let mut lines = head.lines();
    let mut parts = lines.next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" {
        return Route::Refuse("405 Method Not Allowed", "read-only: GET only");
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if let Some(want) = token {
        let from_query = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .map(str::as_bytes);
        let from_header = lines.find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("authorization")
                .then(|| v.trim().strip_prefix("Bearer ").map(str::trim))
                .flatten()
                .map(str::as_bytes)
        });
        let ok = [from_query, from_header]
            .into_iter()
            .flatten()
            .any(|got| same(got, want.as_bytes()));
        if !ok {
            return Route::Refuse(
                "401 Unauthorized",
                "a token is required: ?token=... or Authorization: Bearer ...",
            );
        }
    }
    match path {
        "/" | "/index.html" => Route::Page,
        "/view.json" => Route::ViewJson,
        "/events" => Route::Events,
        _ => Route::Refuse("404 Not Found", "not found: /, /view.json, /events"),
    }
}

/// Whether `addr` can only be reached from this host.
pub fn is_loopback(addr: SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// Serves the live view on `listener` until `shutdown` completes (open event streams
/// end with the runtime).
pub async fn serve(
    listener: TcpListener,
    hub: Arc<LiveView>,
    token: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let token: Option<Arc<str>> = token.map(Arc::from);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = &mut shutdown => return,
        };
        let (sock, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "live view: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (hub, token) = (hub.clone(), token.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(sock, &hub, token.as_deref()).await {
                tracing::debug!(%peer, error = %e, "live view connection ended");
            }
        });
    }
}

async fn read_head(sock: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    tokio::time::timeout(Duration::from_secs(10), async {
        while buf.len() < 16 * 1024 && !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request head"))??;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

async fn reply(
    sock: &mut TcpStream,
    status: &str,
    ctype: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body).await?;
    sock.shutdown().await
}

/// How often an idle event stream gets a comment, so proxies and browsers keep it open.
const KEEPALIVE: Duration = Duration::from_secs(15);

async fn connection(
    mut sock: TcpStream,
    hub: &LiveView,
    token: Option<&str>,
) -> std::io::Result<()> {
    let head = read_head(&mut sock).await?;
    match route(&head, token) {
        Route::Page => {
            let s = hub.current();
            reply(
                &mut sock,
                "200 OK",
                "text/html; charset=utf-8",
                s.html.as_bytes(),
            )
            .await
        }
        Route::ViewJson => {
            let s = hub.current();
            reply(
                &mut sock,
                "200 OK",
                "application/json",
                s.view_json.as_bytes(),
            )
            .await
        }
        Route::Refuse(status, why) => {
            reply(
                &mut sock,
                status,
                "text/plain; charset=utf-8",
                format!("{why}\n").as_bytes(),
            )
            .await
        }
        Route::Events => {
            let mut rx = hub.subscribe();
            sock.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\nConnection: keep-alive\r\n\r\n",
            )
            .await?;
            let first = rx.borrow_and_update().event();
            sock.write_all(first.as_bytes()).await?;
            loop {
                tokio::select! {
                    changed = rx.changed() => {
                        if changed.is_err() {
                            return Ok(());
                        }
                        let ev = rx.borrow_and_update().event();
                        sock.write_all(ev.as_bytes()).await?;
                    }
                    () = tokio::time::sleep(KEEPALIVE) => sock.write_all(b": keep-alive\n\n").await?,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_read_only_and_need_the_token_when_one_is_set() {
        assert_eq!(route("GET / HTTP/1.1\r\n\r\n", None), Route::Page);
        assert_eq!(route("GET /events HTTP/1.1\r\n", None), Route::Events);
        assert_eq!(
            route("GET /view.json?x=1 HTTP/1.1\r\n", None),
            Route::ViewJson
        );
        assert!(
            matches!(route("POST / HTTP/1.1", None), Route::Refuse(s, _) if s.starts_with("405"))
        );
        assert!(
            matches!(route("GET /x HTTP/1.1", None), Route::Refuse(s, _) if s.starts_with("404"))
        );
        assert!(matches!(route("", None), Route::Refuse(s, _) if s.starts_with("405")));
        let t = Some("s3cret");
        assert!(
            matches!(route("GET / HTTP/1.1\r\n", t), Route::Refuse(s, _) if s.starts_with("401"))
        );
        assert!(
            matches!(route("GET /?token=wrong HTTP/1.1\r\n", t), Route::Refuse(s, _) if s.starts_with("401"))
        );
        assert!(
            matches!(route("GET /?token=s3cre HTTP/1.1\r\n", t), Route::Refuse(s, _) if s.starts_with("401"))
        );
        assert_eq!(
            route("GET /events?token=s3cret HTTP/1.1\r\n", t),
            Route::Events
        );
        assert_eq!(
            route(
                "GET / HTTP/1.1\r\nHost: x\r\nauthorization: Bearer s3cret\r\n\r\n",
                t
            ),
            Route::Page
        );
    }

    proptest::proptest! {
        #[test]
        fn any_request_head_gets_an_answer_without_panicking(head in ".{0,300}", tok in proptest::option::of("[a-z]{1,8}")) {
            let r = route(&head, tok.as_deref());
            if tok.is_some() && !head.contains("token=") && !head.to_ascii_lowercase().contains("bearer") {
                proptest::prop_assert!(matches!(r, Route::Refuse(..)));
            }
        }
    }
}
