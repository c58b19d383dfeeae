//! Revoked client certificates, by SHA-256 fingerprint: refused on every call of every
//! service (an interceptor layer in front of them all), and open streams of a revoked
//! certificate (agent sessions, subscriptions, queries) end at once with
//! `PermissionDenied`. The set lives in memory for the per-call check and in the store
//! (`revoked` tree) so that it survives a restart; `serve` loads it before listening.

use std::collections::HashSet;
use std::sync::RwLock;

use tokio::sync::watch;
use tonic::{Request, Status};

use crate::ca::cert_fingerprint;

#[derive(Debug)]
pub struct Revocations {
    set: RwLock<HashSet<String>>,
    /// Bumped on every revocation, so open streams re-check their own fingerprint.
    generation: watch::Sender<u64>,
}

impl Default for Revocations {
    fn default() -> Self {
        Revocations {
            set: RwLock::new(HashSet::new()),
            generation: watch::channel(0).0,
        }
    }
}

impl Revocations {
    pub fn is_revoked(&self, fingerprint: &str) -> bool {
        // A panic while holding this lock leaves a set that is still consistent.
        self.set
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(fingerprint)
    }

    /// Marks a fingerprint revoked (the caller persists it first) and wakes open streams.
    pub fn revoke(&self, fingerprint: &str) {
        self.set
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fingerprint.to_string());
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn len(&self) -> usize {
        self.set.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves once `fingerprint` is revoked (never, for an empty fingerprint).
    pub fn until_revoked(
        self: &std::sync::Arc<Self>,
        fingerprint: String,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let me = self.clone();
        let mut rx = self.generation.subscribe();
        async move {
            if fingerprint.is_empty() {
                return std::future::pending().await;
            }
            loop {
                if me.is_revoked(&fingerprint) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
        }
    }
}

/// SHA-256 of the caller's leaf certificate, or "" without one.
pub fn peer_fingerprint<T>(req: &Request<T>) -> String {
    req.peer_certs()
        .and_then(|c| c.first().map(|d| cert_fingerprint(d)))
        .unwrap_or_default()
}

/// The status an open stream of a revoked certificate ends with.
pub fn revoked_status() -> Status {
    Status::permission_denied("this client certificate has been revoked")
}

/// `stream`, ended at shutdown, or at once with `PermissionDenied` when the certificate
/// `fingerprint` is revoked.
pub fn end_if_revoked<T, S>(
    stream: S,
    c: &super::Coordinator,
    fingerprint: String,
) -> std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>
where
    S: futures::Stream<Item = Result<T, Status>> + Send + 'static,
    T: Send + 'static,
{
    use futures::StreamExt as _;
    let revoked = c.revocations.until_revoked(fingerprint);
    let shutdown = c.shutdown_signal();
    let (tx, rx) = tokio::sync::oneshot::channel::<bool>();
    let stop = async move {
        let was_revoked = tokio::select! {
            _ = revoked => true,
            _ = shutdown => false,
        };
        let _ = tx.send(was_revoked);
    };
    let tail = futures::stream::once(async move {
        // Only a stream cut short by revocation says so; one that ended on its own, or at
        // shutdown, just ends.
        match rx.await {
            Ok(true) => Some(Err(revoked_status())),
            _ => None,
        }
    })
    .filter_map(futures::future::ready);
    Box::pin(stream.take_until(stop).chain(tail))
}

/// For `tonic::service::interceptor::InterceptorLayer`: refuses a revoked certificate
/// before any service sees the call.
pub fn interceptor(
    revocations: std::sync::Arc<Revocations>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + Send + Sync + 'static {
    move |req: Request<()>| {
        if revocations.is_empty() {
            return Ok(req);
        }
        let fp = peer_fingerprint(&req);
        if !fp.is_empty() && revocations.is_revoked(&fp) {
            tracing::info!(fingerprint = %fp, "refused a revoked certificate");
            return Err(revoked_status());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn open_streams_learn_of_their_own_revocation_only() {
        let r = Arc::new(Revocations::default());
        let mine = tokio::spawn(r.until_revoked("aa".into()));
        let other = tokio::spawn(r.until_revoked("bb".into()));
        let none = tokio::spawn(r.until_revoked(String::new()));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!r.is_revoked("aa"));
        r.revoke("aa");
        tokio::time::timeout(Duration::from_secs(5), mine)
            .await
            .expect("woken")
            .expect("join");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!other.is_finished() && !none.is_finished());
        assert!(r.is_revoked("aa") && !r.is_revoked("bb") && r.len() == 1);
        other.abort();
        none.abort();
    }
}
