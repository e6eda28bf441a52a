//! Issue 6: operating Lacquer — graceful shutdown (and more as it lands).

mod common;

use std::time::Duration;

use common::{gate, open, Origin, Proxy, Reply};

#[tokio::test]
async fn shutdown_drains_a_request_in_flight_and_refuses_new_connections() {
    let g = gate();
    let gg = g.clone();
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel();
    let origin = Origin::start(move |_| {
        let _ = arrived_tx.send(());
        Reply::ok("slow but complete")
            .header("cache-control", "no-store")
            .gated(&gg)
    })
    .await;
    let proxy = Proxy::start(&origin).await;
    let addr = proxy.addr;
    let url = proxy.url("/slow");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, http_body_util::Full<bytes::Bytes>>(
        hyper_util::client::legacy::connect::HttpConnector::new(),
    );
    let in_flight = tokio::spawn(async move {
        let res = client
            .get(url.parse().unwrap())
            .await
            .expect("in-flight request answered");
        let status = res.status();
        use http_body_util::BodyExt;
        let body = res
            .into_body()
            .collect()
            .await
            .expect("complete body")
            .to_bytes();
        (status, body)
    });
    // The request is at the origin.
    arrived
        .recv()
        .await
        .expect("the request reached the origin");
    let common::Proxy { running, .. } = proxy;
    let shutdown = tokio::spawn(running.shutdown(Duration::from_secs(20)));
    // New connections are refused once the listener is closed.
    let mut refused = false;
    for _ in 0..1000 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(refused, "the listener closed");
    open(&g);
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, "slow but complete");
    assert!(shutdown.await.unwrap(), "drained within the drain timeout");
}
