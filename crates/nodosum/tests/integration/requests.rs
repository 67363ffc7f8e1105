//! Request/response: replies, timeouts, dropped requests, peer death.

use std::time::Duration;

use nodosum::{Incoming, RequestError};

use crate::util::{cluster, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_get_responses_and_failures_are_typed() {
    let (_ca, mut nodes) = cluster(3).await;
    let mut server = nodes[1].application("rpc").expect("register");
    let client = nodes[0].application("rpc").expect("register");
    let server_id = nodes[1].id().clone();
    let handler = tokio::spawn(async move {
        while let Some(incoming) = server.receive().await {
            if let Incoming::Request(req) = incoming {
                match &req.body()[..] {
                    b"ignore" => drop(req),
                    b"slow" => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                    body => {
                        let mut reply = b"echo:".to_vec();
                        reply.extend_from_slice(body);
                        req.respond(reply).await.expect("respond");
                    }
                }
            }
        }
    });
    let reply = client
        .request(&server_id, "hi", Duration::from_secs(10))
        .await
        .expect("reply");
    assert_eq!(&reply[..], b"echo:hi");
    let concurrent = futures_join(&client, &server_id).await;
    assert_eq!(
        concurrent,
        (0..20).map(|i| format!("echo:{i}")).collect::<Vec<_>>()
    );
    assert_eq!(
        client
            .request(&server_id, "ignore", Duration::from_secs(10))
            .await,
        Err(RequestError::NoResponse {
            node: server_id.clone()
        })
    );
    // The handler sits on this one for an hour (and handles nothing after it).
    let timeout = Duration::from_millis(300);
    assert_eq!(
        client.request(&server_id, "slow", timeout).await,
        Err(RequestError::Timeout {
            node: server_id.clone(),
            timeout
        })
    );

    // A request pending while its peer dies fails with NodeGone.
    let third = nodes.pop().expect("three nodes");
    let mut third_app = third.application("rpc").expect("register");
    let third_id = third.id().clone();
    let pending = {
        let client = client.sender();
        let third_id = third_id.clone();
        tokio::spawn(async move {
            client
                .request(&third_id, "never answered", Duration::from_secs(120))
                .await
        })
    };
    // The request reached the third node; then it crashes.
    let Some(Incoming::Request(req)) = within("request at node-3", third_app.receive()).await
    else {
        panic!("expected a request")
    };
    std::mem::forget(req); // no response, not even the automatic one
    drop(third_app);
    drop(third);
    let result = within("pending request fails", pending)
        .await
        .expect("join");
    assert_eq!(result, Err(RequestError::NodeGone { node: third_id }));
    handler.abort();
}

async fn futures_join(client: &nodosum::Application, server: &nodosum::NodeId) -> Vec<String> {
    let mut tasks = Vec::new();
    for i in 0..20 {
        let c = client.sender();
        let s = server.clone();
        tasks.push(tokio::spawn(async move {
            c.request(&s, format!("{i}"), Duration::from_secs(10)).await
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        let r = t.await.expect("join").expect("reply");
        out.push(String::from_utf8(r.to_vec()).expect("utf8"));
    }
    out
}
