//! A webhook receiver on a free port: answers every POST with 200 and keeps each JSON body, so a
//! test sees exactly what the collector's notifier delivered.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

#[derive(Clone, Default)]
pub struct Webhook {
    pub addr: Option<SocketAddr>,
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Webhook {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hook = Webhook { addr: Some(listener.local_addr().unwrap()), bodies: Arc::default() };
        let bodies = hook.bodies.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let bodies = bodies.clone();
                tokio::spawn(async move {
                    let mut reader = BufReader::new(stream);
                    loop {
                        let mut length = 0usize;
                        let mut line = String::new();
                        // Head: request line, then headers up to the blank line.
                        loop {
                            line.clear();
                            if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            let l = line.trim_end().to_ascii_lowercase();
                            if l.is_empty() {
                                break;
                            }
                            if let Some(v) = l.strip_prefix("content-length:") {
                                length = v.trim().parse().unwrap_or(0);
                            }
                        }
                        let mut body = vec![0; length];
                        if reader.read_exact(&mut body).await.is_err() {
                            return;
                        }
                        if let Ok(v) = serde_json::from_slice(&body) {
                            bodies.lock().unwrap().push(v);
                        }
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                        if reader.get_mut().write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        hook
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr.unwrap())
    }

    /// Every body received so far.
    pub fn bodies(&self) -> Vec<serde_json::Value> {
        self.bodies.lock().unwrap().clone()
    }
}
