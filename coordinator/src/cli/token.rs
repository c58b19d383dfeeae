//! `tracemesh token create`: a one-time enrolment token, printed alone.

use tonic::transport::Channel;
use tracemesh_proto::v1;
use tracemesh_proto::v1::consumer_service_client::ConsumerServiceClient;

use super::args::TokenCreateArgs;
use super::client::status;

pub async fn create(
    c: &mut ConsumerServiceClient<Channel>,
    a: TokenCreateArgs,
) -> anyhow::Result<()> {
    let resp = c
        .create_token(v1::CreateTokenRequest {
            metadata: Some(v1::AgentMetadata {
                name: a.name,
                country: a.country.unwrap_or_default(),
                city: a.city.unwrap_or_default(),
                lat: a.loc.map(|l| l.0),
                lon: a.loc.map(|l| l.1),
                asn: a.asn,
                tags: a.tags,
            }),
            ttl_s: a.ttl,
        })
        .await
        .map_err(|s| status("token create", s))?
        .into_inner();
    println!("{}", resp.token);
    Ok(())
}
