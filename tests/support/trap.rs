//! A TCP listener that only counts who connects: the place a denied URL
//! would have reached, so a test can assert nobody came.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub struct Trap {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Trap {
    /// Listens on `ip`, port 0 (or `port`); `None` when the address cannot be bound.
    pub async fn bind(ip: &str, port: u16) -> Option<Trap> {
        let l = tokio::net::TcpListener::bind((ip, port)).await.ok()?;
        let addr = l.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                h.fetch_add(1, Ordering::SeqCst);
                drop(s);
            }
        });
        Some(Trap { addr, hits, task })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn connections(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Trap {
    fn drop(&mut self) {
        self.task.abort();
    }
}
