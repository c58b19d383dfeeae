//! The cap on open streams per client identity (`serve --max-streams`). HTTP/2's own
//! per-connection limit does not give a clear answer: a conforming client queues the
//! stream over it and waits, and a hostile one just opens more connections. So each
//! long-lived consumer stream (queries, exports, subscriptions) holds a permit counted
//! per certificate, across connections; one over the cap is refused at once with
//! `ResourceExhausted`, and the permit goes back when the stream ends or the client
//! drops it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt as _};
use tonic::Status;

/// Open streams per identity (its certificate's fingerprint).
#[derive(Debug)]
pub struct OpenStreams {
    max: usize,
    open: Mutex<HashMap<String, usize>>,
}

/// One open stream of one identity; dropping it gives the slot back.
#[derive(Debug)]
pub struct StreamPermit {
    owner: Arc<OpenStreams>,
    key: String,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

impl OpenStreams {
    /// At most `max` open streams per identity (0 = no cap).
    pub fn new(max: usize) -> Arc<OpenStreams> {
        Arc::new(OpenStreams {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for one more stream of `key`, or the count it already has open.
    pub fn try_open(self: &Arc<Self>, key: &str) -> Result<StreamPermit, usize> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(key.to_string()).or_insert(0);
        if self.max > 0 && *n >= self.max {
            return Err(*n);
        }
        *n += 1;
        Ok(StreamPermit {
            owner: self.clone(),
            key: key.to_string(),
        })
    }

    /// Streams `key` has open now.
    pub fn open(&self, key: &str) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(key).copied().unwrap_or(0)
    }

    /// [`OpenStreams::try_open`] for a caller named `who` (for the message), refusing
    /// with the status a client sees.
    pub fn admit(self: &Arc<Self>, key: &str, who: &str) -> Result<StreamPermit, Status> {
        self.try_open(key).map_err(|n| {
            tracing::warn!(identity = %who, open = n, cap = self.max, "stream refused: over the cap");
            Status::resource_exhausted(format!(
                "{who:?} already has {n} open streams (the coordinator's --max-streams is {}); \
                 close one first",
                self.max
            ))
        })
    }
}

/// `stream`, holding `permit` until it ends or is dropped.
pub fn holding<S, T>(
    stream: S,
    permit: StreamPermit,
) -> std::pin::Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>
where
    S: Stream<Item = Result<T, Status>> + Send + 'static,
    T: Send + 'static,
{
    Box::pin(stream.map(move |item| {
        let _held = &permit;
        item
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_per_identity_and_slots_come_back() {
        let s = OpenStreams::new(2);
        let a1 = s.try_open("a").unwrap();
        let _a2 = s.try_open("a").unwrap();
        assert_eq!(s.try_open("a").unwrap_err(), 2);
        // Another identity has its own slots.
        let _b = s.try_open("b").unwrap();
        drop(a1);
        assert_eq!(s.open("a"), 1);
        let _a3 = s.try_open("a").unwrap();
        let st = s.admit("a", "dashboard").unwrap_err();
        assert_eq!(st.code(), tonic::Code::ResourceExhausted);
        assert!(st.message().contains("--max-streams is 2"), "{st:?}");
        // No cap.
        let free = OpenStreams::new(0);
        let held: Vec<_> = (0..1000).map(|_| free.try_open("a").unwrap()).collect();
        assert_eq!(free.open("a"), 1000);
        drop(held);
        assert_eq!(free.open("a"), 0);
    }

    #[tokio::test]
    async fn the_permit_lives_as_long_as_the_stream() {
        let s = OpenStreams::new(1);
        let p = s.try_open("a").unwrap();
        let mut st = holding(futures::stream::iter(vec![Ok::<_, Status>(1), Ok(2)]), p);
        assert!(s.try_open("a").is_err());
        assert_eq!(st.next().await.unwrap().unwrap(), 1);
        assert!(s.try_open("a").is_err());
        drop(st);
        assert!(s.try_open("a").is_ok());
    }
}
