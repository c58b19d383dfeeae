//! `ConsumerService`: tokens, agents, campaigns, trace queries and subscriptions.
//! Queries and subscriptions need the reader role, tokens and campaigns the operator role
//! (`auth.rs`); an operator's live campaigns and targets are capped (`quota.rs`).

use std::pin::Pin;
use std::sync::Arc;

use base64::Engine as _;
use futures::{Stream, StreamExt as _};
use rand::RngCore as _;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::{BroadcastStream, ReceiverStream};
use tonic::{Request, Response, Status};
use tracemesh_proto::token::EnrolToken;
use tracemesh_proto::v1;

use super::agent_svc::secret_hash;
use super::auth::{authorize, authorize_role};
use super::revoke::{end_if_revoked, peer_fingerprint};
use super::state::{Coordinator, now_ns};
use super::streams::{OpenStreams, StreamPermit, holding};
use crate::ca::{Role, valid_name};
use crate::campaign;
use crate::formats;
use crate::store::{AgentMeta, StoreError, TokenRecord, TraceQuery};

const DEFAULT_TOKEN_TTL_S: u32 = 24 * 3600;
/// Bytes per `ExportChunk`.
const CHUNK: usize = 256 * 1024;

/// An encoder's output, sent as `ExportChunk`s of about [`CHUNK`] bytes; `flush` sends
/// the rest. A send the client no longer receives is a broken pipe.
struct ChunkSink {
    buf: Vec<u8>,
    tx: tokio::sync::mpsc::Sender<Result<v1::ExportChunk, Status>>,
}

impl std::fmt::Debug for ChunkSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkSink")
            .field("buffered", &self.buf.len())
            .finish()
    }
}

impl ChunkSink {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(Ok(v1::ExportChunk { data }))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }
}

impl std::io::Write for ChunkSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

#[derive(Debug, Clone)]
pub struct ConsumerSvc {
    c: Arc<Coordinator>,
    /// Open query, export and subscription streams per identity (`--max-streams`).
    streams: Arc<OpenStreams>,
}

impl ConsumerSvc {
    pub fn new(c: Arc<Coordinator>) -> Self {
        let streams = OpenStreams::new(c.limits.max_streams as usize);
        ConsumerSvc { c, streams }
    }

    /// A stream slot for the caller of `req` (named `who`), or ResourceExhausted.
    fn stream_slot<T>(&self, req: &Request<T>, who: &str) -> Result<StreamPermit, Status> {
        self.streams.admit(&peer_fingerprint(req), who)
    }

    /// Refuses a campaign that would take operator `by` over its caps on live campaigns
    /// or targets (ResourceExhausted, saying which cap).
    async fn check_operator_caps(
        &self,
        by: &str,
        spec: &v1::CampaignSpec,
        now: i64,
    ) -> Result<(), Status> {
        let new_targets = campaign::build("cap-check", spec, now)
            .map_err(|e| Status::invalid_argument(e.to_string()))?
            .expanded_targets
            .len();
        let owner = by.to_string();
        let (live, live_targets) = self
            .c
            .blocking(move |s| {
                let (mut n, mut targets) = (0usize, 0usize);
                for c in s.list_campaigns()? {
                    if matches!(
                        campaign::state(&c, now),
                        v1::CampaignState::Finished | v1::CampaignState::Cancelled
                    ) || c.cancelled_at_ns.is_some()
                    {
                        continue;
                    }
                    if s.campaign_owner(&c.id)?.as_deref() == Some(owner.as_str()) {
                        n += 1;
                        targets += c.expanded_targets.len();
                    }
                }
                Ok((n, targets))
            })
            .await?;
        super::quota::operator_may_create(&self.c.limits, live, live_targets, new_targets).map_err(
            |why| {
                tracing::warn!(operator = %by, %why, "campaign refused: over cap");
                Status::resource_exhausted(why)
            },
        )
    }

    /// The stored campaign with its live fields (state, trace count) filled in.
    fn present(&self, mut c: v1::Campaign, now: i64) -> Result<v1::Campaign, StoreError> {
        c.state = campaign::state(&c, now) as i32;
        c.traces_stored = self.c.store.count_traces(&c.id)?;
        Ok(c)
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn validate_meta(m: &v1::AgentMetadata) -> Result<(), Status> {
    if !valid_name(&m.name) {
        return Err(Status::invalid_argument(format!(
            "invalid agent name {:?}: use 1-64 characters from [A-Za-z0-9._-]",
            m.name
        )));
    }
    let country_ok = m.country.is_empty()
        || (m.country.len() == 2 && m.country.chars().all(|c| c.is_ascii_alphabetic()));
    if !country_ok {
        return Err(Status::invalid_argument(format!(
            "invalid country {:?}: expected an ISO 3166 alpha-2 code",
            m.country
        )));
    }
    if let (Some(lat), Some(lon)) = (m.lat, m.lon)
        && !((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon))
    {
        return Err(Status::invalid_argument(format!(
            "invalid location {lat},{lon}"
        )));
    }
    if m.lat.is_some() != m.lon.is_some() {
        return Err(Status::invalid_argument(
            "location needs both latitude and longitude",
        ));
    }
    Ok(())
}

#[tonic::async_trait]
impl v1::consumer_service_server::ConsumerService for ConsumerSvc {
    async fn create_token(
        &self,
        req: Request<v1::CreateTokenRequest>,
    ) -> Result<Response<v1::CreateTokenResponse>, Status> {
        authorize(&req, Role::Operator)?;
        let req = req.into_inner();
        let mut meta = req
            .metadata
            .ok_or_else(|| Status::invalid_argument("token needs agent metadata"))?;
        meta.country = meta.country.to_ascii_uppercase();
        validate_meta(&meta)?;
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        let now = now_ns();
        let ttl_s = if req.ttl_s == 0 {
            DEFAULT_TOKEN_TTL_S
        } else {
            req.ttl_s
        };
        let expires_at_ns = now.saturating_add(i64::from(ttl_s) * 1_000_000_000);
        let record = TokenRecord {
            meta: AgentMeta::from_proto(&meta),
            created_at_ns: now,
            expires_at_ns,
            used_at_ns: None,
        };
        let hash = secret_hash(&secret);
        self.c
            .blocking(move |s| {
                s.put_token(&hash, &record)?;
                s.flush()
            })
            .await?;
        let token = EnrolToken {
            coordinator: self.c.advertise.clone(),
            name: meta.name.clone(),
            secret,
            ca_pem: self.c.ca.cert_pem().to_string(),
            expires_at: expires_at_ns / 1_000_000_000,
        };
        tracing::info!(name = %meta.name, ttl_s, "token created");
        Ok(Response::new(v1::CreateTokenResponse {
            token: token.encode(),
            expires_at_ns,
        }))
    }

    async fn list_agents(
        &self,
        req: Request<v1::ListAgentsRequest>,
    ) -> Result<Response<v1::ListAgentsResponse>, Status> {
        authorize(&req, Role::Reader)?;
        let records = self.c.blocking(|s| s.list_agents()).await?;
        let agents = records
            .into_iter()
            .map(|r| {
                let live = self.c.live(&r.meta.name);
                v1::AgentInfo {
                    metadata: Some(r.meta.to_proto()),
                    connected: live.is_some(),
                    enrolled_at_ns: r.enrolled_at_ns,
                    last_seen_ns: live.as_ref().map(|l| l.last_seen_ns).or(r.last_seen_ns),
                    clock_offset_ns: live.as_ref().and_then(|l| l.clock_offset_ns),
                    clock_rtt_ns: live.as_ref().and_then(|l| l.clock_rtt_ns),
                    agent_version: live
                        .as_ref()
                        .map(|l| l.agent_version.clone())
                        .filter(|v| !v.is_empty())
                        .unwrap_or(r.agent_version),
                    spooled_results: live.map(|l| l.spooled_results).unwrap_or(0),
                    mesh_addr: r.mesh_addr.clone().unwrap_or_default(),
                }
            })
            .collect();
        Ok(Response::new(v1::ListAgentsResponse { agents }))
    }

    async fn create_campaign(
        &self,
        req: Request<v1::CreateCampaignRequest>,
    ) -> Result<Response<v1::Campaign>, Status> {
        let (role, by) = authorize_role(&req, Role::Operator)?;
        let spec = req
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("campaign spec missing"))?;
        let now = now_ns();
        // Held across the check and the creation, so two concurrent requests cannot both
        // squeeze under an operator's cap.
        let _cap_guard = self.c.operator_caps.lock().await;
        if role == Role::Operator {
            self.check_operator_caps(&by, &spec, now).await?;
        }
        let (c, _) = self.c.create_campaign(&spec).await.map_err(|e| match e {
            super::state::CreateError::Invalid(e) => Status::invalid_argument(e.to_string()),
            e => Status::internal(super::client::error_chain(&e)),
        })?;
        let (id, owner) = (c.id.clone(), by.clone());
        self.c
            .blocking(move |s| {
                s.put_campaign_owner(&id, &owner)?;
                s.flush()
            })
            .await?;
        Ok(Response::new(self.present(c, now).map_err(|e| {
            Status::internal(super::client::error_chain(&e))
        })?))
    }

    async fn list_campaigns(
        &self,
        req: Request<v1::ListCampaignsRequest>,
    ) -> Result<Response<v1::ListCampaignsResponse>, Status> {
        authorize(&req, Role::Reader)?;
        let now = now_ns();
        let list = self.c.blocking(|s| s.list_campaigns()).await?;
        let campaigns = list
            .into_iter()
            .map(|c| self.present(c, now))
            .collect::<Result<_, _>>()
            .map_err(|e| Status::internal(super::client::error_chain(&e)))?;
        Ok(Response::new(v1::ListCampaignsResponse { campaigns }))
    }

    async fn get_campaign(
        &self,
        req: Request<v1::GetCampaignRequest>,
    ) -> Result<Response<v1::Campaign>, Status> {
        authorize(&req, Role::Reader)?;
        let id = req.into_inner().id;
        let c = self
            .c
            .blocking({
                let id = id.clone();
                move |s| s.get_campaign(&id)
            })
            .await?
            .ok_or_else(|| Status::not_found(format!("no campaign {id:?}")))?;
        Ok(Response::new(self.present(c, now_ns()).map_err(|e| {
            Status::internal(super::client::error_chain(&e))
        })?))
    }

    async fn cancel_campaign(
        &self,
        req: Request<v1::CancelCampaignRequest>,
    ) -> Result<Response<v1::Campaign>, Status> {
        authorize(&req, Role::Operator)?;
        let id = req.into_inner().id;
        let now = now_ns();
        let c = {
            let _guard = self.c.campaign_lock.lock().await;
            let mut c = self
                .c
                .store
                .get_campaign(&id)
                .map_err(|e| Status::internal(super::client::error_chain(&e)))?
                .ok_or_else(|| Status::not_found(format!("no campaign {id:?}")))?;
            if c.cancelled_at_ns.is_none() {
                c.cancelled_at_ns = Some(now);
                let stored = c.clone();
                self.c
                    .blocking(move |s| {
                        s.put_campaign(&stored)?;
                        s.flush()
                    })
                    .await?;
            }
            c
        };
        let msg = v1::CoordinatorMessage {
            msg: Some(v1::coordinator_message::Msg::CancelCampaign(
                v1::CancelCampaign {
                    campaign_id: id.clone(),
                },
            )),
        };
        for (_, live) in self.c.live_all() {
            // An agent that misses this learns it from its next Hello (held campaigns that
            // are cancelled get a CancelCampaign).
            super::state::send_or_give_up(&live.tx, msg.clone()).await;
        }
        tracing::info!(%id, "campaign cancelled");
        Ok(Response::new(self.present(c, now).map_err(|e| {
            Status::internal(super::client::error_chain(&e))
        })?))
    }

    type QueryTracesStream = BoxStream<v1::TraceRecord>;

    async fn query_traces(
        &self,
        req: Request<v1::QueryTracesRequest>,
    ) -> Result<Response<Self::QueryTracesStream>, Status> {
        let who = authorize(&req, Role::Reader)?;
        let slot = self.stream_slot(&req, &who)?;
        let fp = peer_fingerprint(&req);
        let r = req.into_inner();
        let q = TraceQuery {
            campaign_id: r.campaign_id,
            vantage: r.vantage,
            dst: r.dst,
            since_ns: r.since_ns,
            until_ns: r.until_ns,
            limit: r.limit as usize,
        };
        // Stream from the store as it is read, so a large campaign is never held in memory
        // whole; the bounded channel paces the store walk to the client.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<v1::TraceRecord, Status>>(256);
        let store = self.c.store.clone();
        tokio::task::spawn_blocking(move || {
            let res = store.for_each_trace(&q, &mut |t| tx.blocking_send(Ok(t)).is_ok());
            if let Err(e) = res {
                tracing::error!(error = %super::client::error_chain(&e), "trace query failed");
                let _ = tx.blocking_send(Err(Status::internal(super::client::error_chain(&e))));
            }
        });
        Ok(Response::new(holding(
            end_if_revoked(ReceiverStream::new(rx), &self.c, fp),
            slot,
        )))
    }

    type ExportTracesStream = BoxStream<v1::ExportChunk>;

    async fn export_traces(
        &self,
        req: Request<v1::ExportTracesRequest>,
    ) -> Result<Response<Self::ExportTracesStream>, Status> {
        let who = authorize(&req, Role::Admin)?;
        let slot = self.stream_slot(&req, &who)?;
        let r = req.into_inner();
        if !formats::STREAM_FORMATS.contains(&r.format.as_str()) {
            return Err(Status::invalid_argument(format!(
                "unknown export format {:?}: expected one of {:?}",
                r.format,
                formats::STREAM_FORMATS
            )));
        }
        let q = r.query.unwrap_or_default();
        let q = TraceQuery {
            campaign_id: q.campaign_id,
            vantage: q.vantage,
            dst: q.dst,
            since_ns: q.since_ns,
            until_ns: q.until_ns,
            limit: q.limit as usize,
        };
        // Encoded as the store is walked, in chunks, paced by the client like QueryTraces.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<v1::ExportChunk, Status>>(8);
        let store = self.c.store.clone();
        tokio::task::spawn_blocking(move || {
            let sink = ChunkSink {
                buf: Vec::with_capacity(CHUNK),
                tx: tx.clone(),
            };
            let mut enc = match formats::Encoder::new(&r.format, sink) {
                Ok(e) => e,
                Err(e) => {
                    let _ = tx.blocking_send(Err(Status::internal(e.to_string())));
                    return;
                }
            };
            let mut failed = None;
            let res = store.for_each_trace(&q, &mut |t| match enc.write(&t) {
                Ok(()) => true,
                Err(e) => {
                    failed = Some(e);
                    false
                }
            });
            let err = match (res, failed) {
                (Err(e), _) => Some(super::client::error_chain(&e)),
                // The client went away (the sink could not send): nobody to tell.
                (Ok(()), Some(formats::FormatError::Io(_))) => return,
                (Ok(()), Some(e)) => Some(e.to_string()),
                (Ok(()), None) => enc.finish().err().map(|e| e.to_string()),
            };
            if let Some(e) = err {
                tracing::error!(error = %e, "trace export failed");
                let _ = tx.blocking_send(Err(Status::internal(e)));
            }
        });
        Ok(Response::new(holding(ReceiverStream::new(rx), slot)))
    }

    type SubscribeTracesStream = BoxStream<v1::TraceRecord>;

    async fn subscribe_traces(
        &self,
        req: Request<v1::SubscribeTracesRequest>,
    ) -> Result<Response<Self::SubscribeTracesStream>, Status> {
        let who = authorize(&req, Role::Reader)?;
        let slot = self.stream_slot(&req, &who)?;
        let fp = peer_fingerprint(&req);
        let r = req.into_inner();
        let rx = BroadcastStream::new(self.c.subscribe_traces());
        let out = rx.filter_map(move |item| {
            let keep = match item {
                Ok(t) => {
                    let ok = r.campaign_id.as_ref().is_none_or(|c| *c == t.campaign_id)
                        && r.vantage.as_ref().is_none_or(|v| *v == t.vantage);
                    ok.then_some(Ok(t))
                }
                // A subscriber too slow to keep up is told, not silently starved.
                Err(BroadcastStreamRecvError::Lagged(n)) => Some(Err(Status::data_loss(format!(
                    "subscriber fell behind; {n} traces skipped (query them back)"
                )))),
            };
            futures::future::ready(keep)
        });
        Ok(Response::new(holding(
            end_if_revoked(out, &self.c, fp),
            slot,
        )))
    }

    type SubscribeDiversionsStream = BoxStream<v1::Diversion>;

    async fn subscribe_diversions(
        &self,
        req: Request<v1::SubscribeDiversionsRequest>,
    ) -> Result<Response<Self::SubscribeDiversionsStream>, Status> {
        let who = authorize(&req, Role::Reader)?;
        let slot = self.stream_slot(&req, &who)?;
        let fp = peer_fingerprint(&req);
        let vantage = req.into_inner().vantage;
        let rx = BroadcastStream::new(self.c.subscribe_diversions());
        let out = rx.filter_map(move |item| {
            futures::future::ready(match item {
                Ok(d) => vantage
                    .as_ref()
                    .is_none_or(|v| *v == d.vantage)
                    .then_some(Ok(d)),
                Err(BroadcastStreamRecvError::Lagged(n)) => Some(Err(Status::data_loss(format!(
                    "subscriber fell behind; {n} diversions skipped"
                )))),
            })
        });
        Ok(Response::new(holding(
            end_if_revoked(out, &self.c, fp),
            slot,
        )))
    }

    async fn query_aliases(
        &self,
        req: Request<v1::QueryAliasesRequest>,
    ) -> Result<Response<v1::QueryAliasesResponse>, Status> {
        authorize(&req, Role::Reader)?;
        let q = req.into_inner();
        let campaign = q.campaign_id.clone();
        let results = self
            .c
            .collect(
                move |s, f| s.for_each_alias_result(campaign.as_deref(), f),
                |_| true,
            )
            .await?;
        let aliases = crate::alias::merge(&results);
        Ok(Response::new(v1::QueryAliasesResponse {
            aliases,
            results: if q.include_results { results } else { vec![] },
        }))
    }

    type QueryDiversionRecordsStream = BoxStream<v1::StoredDiversion>;

    async fn query_diversion_records(
        &self,
        req: Request<v1::QueryDiversionRecordsRequest>,
    ) -> Result<Response<Self::QueryDiversionRecordsStream>, Status> {
        authorize(&req, Role::Reader)?;
        let q = req.into_inner();
        let prefix = q.vantage.map(|v| format!("{v}|"));
        let all = q.all;
        let records = self
            .c
            .collect(
                move |s, f| {
                    // Retired: the episode ended before the latest sweep's cut, so its
                    // traces are gone and detection over the store cannot find it.
                    let horizon_s = match s.retention_horizon()? {
                        Some(ns) => ns as f64 / 1e9,
                        None if all => f64::INFINITY,
                        None => return Ok(()),
                    };
                    s.for_each_diversion_record(&mut |k, v| {
                        let retired = all
                            || serde_json::from_slice::<serde_json::Value>(v)
                                .ok()
                                .and_then(|r| r.get("last_seen")?.as_f64())
                                .is_some_and(|last| last < horizon_s);
                        if !retired {
                            return true;
                        }
                        f(v1::StoredDiversion {
                            key: k.to_owned(),
                            json: String::from_utf8_lossy(v).into_owned(),
                        })
                    })
                },
                move |d: &v1::StoredDiversion| prefix.as_ref().is_none_or(|p| d.key.starts_with(p)),
            )
            .await?;
        Ok(Response::new(Box::pin(tokio_stream::iter(
            records.into_iter().map(Ok),
        ))))
    }

    type QueryMeshStream = BoxStream<v1::MeshSample>;

    async fn query_mesh(
        &self,
        req: Request<v1::QueryMeshRequest>,
    ) -> Result<Response<Self::QueryMeshStream>, Status> {
        authorize(&req, Role::Admin)?;
        let q = req.into_inner();
        let campaign = q.campaign_id.clone();
        let samples = self
            .c
            .collect(
                move |s, f| s.for_each_mesh_sample(campaign.as_deref(), f),
                move |m| mesh_matches(&q, m),
            )
            .await?;
        Ok(Response::new(Box::pin(tokio_stream::iter(
            samples.into_iter().map(Ok),
        ))))
    }

    type QueryMdaStream = BoxStream<v1::MdaResult>;

    async fn query_mda(
        &self,
        req: Request<v1::QueryMdaRequest>,
    ) -> Result<Response<Self::QueryMdaStream>, Status> {
        authorize(&req, Role::Reader)?;
        let q = req.into_inner();
        let campaign = q.campaign_id.clone();
        let results = self
            .c
            .collect(
                move |s, f| s.for_each_mda_result(campaign.as_deref(), f),
                move |r: &v1::MdaResult| {
                    q.vantage.as_ref().is_none_or(|v| *v == r.vantage)
                        && q.dst.as_ref().is_none_or(|d| *d == r.dst)
                },
            )
            .await?;
        Ok(Response::new(Box::pin(tokio_stream::iter(
            results.into_iter().map(Ok),
        ))))
    }

    type SubscribeMeshStream = BoxStream<v1::MeshSample>;

    async fn subscribe_mesh(
        &self,
        req: Request<v1::SubscribeMeshRequest>,
    ) -> Result<Response<Self::SubscribeMeshStream>, Status> {
        let who = authorize(&req, Role::Admin)?;
        let slot = self.stream_slot(&req, &who)?;
        let campaign = req.into_inner().campaign_id;
        let rx = BroadcastStream::new(self.c.subscribe_mesh());
        let out = rx
            .filter_map(move |item| {
                futures::future::ready(match item {
                    Ok(m) => campaign
                        .as_ref()
                        .is_none_or(|c| *c == m.campaign_id)
                        .then_some(Ok(m)),
                    Err(BroadcastStreamRecvError::Lagged(n)) => {
                        Some(Err(Status::data_loss(format!(
                            "subscriber fell behind; {n} mesh samples skipped (query them back)"
                        ))))
                    }
                })
            })
            .take_until(self.c.shutdown_signal());
        Ok(Response::new(holding(out, slot)))
    }
}

fn mesh_matches(q: &v1::QueryMeshRequest, m: &v1::MeshSample) -> bool {
    q.src.as_ref().is_none_or(|s| *s == m.src)
        && q.dst.as_ref().is_none_or(|d| *d == m.dst)
        && q.since_ns.is_none_or(|t| m.at_ns >= t)
        && q.until_ns.is_none_or(|t| m.at_ns < t)
}
