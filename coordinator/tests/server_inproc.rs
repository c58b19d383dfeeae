//! The server run in-process through `serve_with`, as the detector will run alongside it:
//! diversions published on the coordinator reach `SubscribeDiversions` subscribers.

use std::time::Duration;

use tracemesh::server::{self, Coordinator, ServeConfig};
use tracemesh_proto::v1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_diversions_reach_filtered_subscribers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (coord_tx, coord_rx) = tokio::sync::oneshot::channel::<std::sync::Arc<Coordinator>>();
    let cfg = ServeConfig {
        data: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        advertise: None,
    };
    let srv = tokio::spawn(server::serve_with(
        cfg,
        async {
            let _ = stop_rx.await;
        },
        move |c| {
            let _ = coord_tx.send(c);
        },
    ));
    let coord = coord_rx.await.expect("server started");
    let addr = std::fs::read_to_string(dir.path().join("coordinator.addr")).expect("addr file");
    let bundle = std::fs::read_to_string(dir.path().join("admin.pem")).expect("identity");
    let mut client = server::client::connect_admin(addr.trim(), &bundle)
        .await
        .expect("connect");
    let mut all = client
        .subscribe_diversions(v1::SubscribeDiversionsRequest { vantage: None })
        .await
        .expect("subscribe")
        .into_inner();
    let mut ottawa = client
        .subscribe_diversions(v1::SubscribeDiversionsRequest {
            vantage: Some("ottawa".into()),
        })
        .await
        .expect("subscribe")
        .into_inner();
    // Subscriptions are registered once the call returns headers; give the server a beat.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let d = |v: &str| v1::Diversion {
        vantage: v.into(),
        target: "211.192.1.1".into(),
        adversary_asn: 4134,
        handoff: Some(v1::DivertingHop {
            addr: "24.114.255.1".into(),
            asn: Some(812),
            ..Default::default()
        }),
        ingress: Some(v1::DivertingHop {
            addr: "202.97.10.1".into(),
            asn: Some(4134),
            lat: Some(43.7),
            lon: Some(-79.4),
            radius_km: Some(120.0),
            city: Some("Toronto".into()),
        }),
        first_seen: 1_795_400_000.5,
        last_seen: 1_795_400_090.2,
        rounds: 9,
        campaign_id: "c1".into(),
        ..Default::default()
    };
    coord.publish_diversion(d("paris"));
    coord.publish_diversion(d("ottawa"));
    assert_eq!(next(&mut all).await.vantage, "paris");
    assert_eq!(next(&mut all).await, d("ottawa"));
    assert_eq!(next(&mut ottawa).await, d("ottawa"));

    // Shutdown ends the open subscription streams instead of hanging on them.
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(10), srv)
        .await
        .expect("server stopped in time")
        .expect("join")
        .expect("serve ok");
    assert!(!dir.path().join("coordinator.addr").exists());
}

async fn next(s: &mut tonic::Streaming<v1::Diversion>) -> v1::Diversion {
    tokio::time::timeout(Duration::from_secs(5), s.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("open")
}
