//! Bounds on what clients can make the server hold: slow headers, live
//! event streams, submissions per user and the queue length.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{backends, Backend, TestApp};

/// A client that trickles its headers is cut off after
/// `server.header_read_timeout_secs`, and a normal request still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_client_is_disconnected() {
    let app = TestApp::spawn(Backend::Sqlite, |c| {
        c.server.header_read_timeout_secs = 1;
        c.worker.pool_size = 0;
    })
    .await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let start = Instant::now();
    sock.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    let mut closed = false;
    let mut buf = [0u8; 512];
    // One header byte every 300 ms: never done, never idle long enough by itself.
    for _ in 0..30 {
        if sock.write_all(b"X").await.is_err() {
            closed = true;
            break;
        }
        match tokio::time::timeout(Duration::from_millis(300), sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => {
                // hyper answers 408 before closing.
                assert!(String::from_utf8_lossy(&buf[..n]).contains("408"));
                closed = true;
                break;
            }
            Err(_) => {}
        }
    }
    assert!(
        closed,
        "the connection was still open after {:?}",
        start.elapsed()
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(app.get_text("/healthz").await.0, 200);
    app.stop().await;
}

/// Live job views are bounded per user and in all; a closed one frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_event_streams_are_bounded_per_user() {
    let app = TestApp::spawn(Backend::Sqlite, |c| {
        c.server.max_event_streams_per_user = 2;
        c.server.max_event_streams = 3;
        c.worker.pool_size = 0;
    })
    .await;
    let job = app.submit(json!({"url": "https://h.example/a.img"})).await;
    let path = format!("/api/v1/jobs/{}/events", job["id"].as_str().unwrap());
    let open = |client: reqwest::Client| {
        let url = app.url(&path);
        async move { client.get(url).send().await.unwrap() }
    };
    let a = open(app.client.clone()).await;
    let b = open(app.client.clone()).await;
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    let third = open(app.client.clone()).await;
    assert_eq!(third.status().as_u16(), 429);
    assert!(third.headers().contains_key("retry-after"));
    let body: serde_json::Value = third.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("live views open"),
        "{body}"
    );
    // Another user still gets one, up to the total.
    let bob = app.client_as("bob", "viewer").await;
    let c = open(bob.clone()).await;
    assert_eq!(c.status().as_u16(), 200);
    assert_eq!(open(bob.clone()).await.status().as_u16(), 429, "3 in all");
    // Closing a stream frees its place.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = open(app.client.clone()).await;
        if r.status().as_u16() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed stream's place was never freed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop((b, c));
    app.stop().await;
}

/// One user cannot flood the queue, and a full queue refuses everyone, with 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_are_limited_per_user_and_by_queue_length() {
    for backend in backends() {
        let app = TestApp::spawn(backend, |c| {
            c.server.max_submissions_per_minute = 3;
            c.server.max_queued_jobs = 5;
            c.worker.pool_size = 0;
        })
        .await;
        for _ in 0..3 {
            app.submit(json!({"url": "https://h.example/a.img"})).await;
        }
        let (s, e) = app
            .post("/api/v1/jobs", json!({"url": "https://h.example/a.img"}))
            .await;
        assert_eq!(s, 429, "{e}");
        assert!(
            e["error"]
                .as_str()
                .unwrap()
                .contains("max_submissions_per_minute"),
            "{e}"
        );
        // Others may still submit, until the queue is full.
        let ann = app.client_as("ann", "requester").await;
        let post = |c: &reqwest::Client| {
            c.post(app.url("/api/v1/jobs"))
                .json(&json!({"url": "https://h.example/b.img"}))
                .send()
        };
        assert_eq!(post(&ann).await.unwrap().status().as_u16(), 201);
        assert_eq!(post(&ann).await.unwrap().status().as_u16(), 201);
        let r = post(&ann).await.unwrap();
        assert_eq!(r.status().as_u16(), 429);
        assert_eq!(r.headers()["retry-after"], "60");
        let e: serde_json::Value = r.json().await.unwrap();
        assert!(
            e["error"]
                .as_str()
                .unwrap()
                .contains("the queue is full: 5 jobs"),
            "{e}"
        );
        let (_, audit) = app.get("/api/v1/audit?action=submit&outcome=refused").await;
        assert_eq!(audit["entries"].as_array().unwrap().len(), 2, "{audit}");
        app.stop().await;
    }
}
