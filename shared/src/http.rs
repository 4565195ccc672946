//! A deliberately tiny HTTP/1.1 server for `/metrics` and status pages: one GET per connection,
//! 8 KiB of request head at most, a 5 s deadline per request. It runs beside the fast path on a
//! gateway and in the collector, where a web framework would be dead weight.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// An answer: status line (e.g. `"200 OK"`), content type, body.
pub type Response = (&'static str, &'static str, String);

/// Binds `addr` (port 0 picks a free one) and returns the listener with its real address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Serves GET requests on `listener` with `handle(path)` until `stop` completes. `None` from the
/// handler is a 404.
pub async fn serve<H>(listener: TcpListener, handle: H, stop: impl Future<Output = ()>)
where
    H: Fn(&str) -> Option<Response> + Send + Sync + 'static,
{
    let handle = Arc::new(handle);
    tokio::pin!(stop);
    loop {
        let (mut stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "http endpoint cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stop => return,
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let answer = tokio::time::timeout(Duration::from_secs(5), async {
                let (status, kind, body) = match read_request_path(&mut stream).await {
                    Some(path) => handle(&path).unwrap_or(("404 Not Found", "text/plain", "not found\n".into())),
                    None => ("400 Bad Request", "text/plain", "expected a GET request\n".into()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                stream.write_all(head.as_bytes()).await?;
                stream.write_all(body.as_bytes()).await?;
                stream.shutdown().await
            })
            .await;
            if let Ok(Err(e)) = answer {
                tracing::debug!(%peer, error = %e, "http request failed");
            }
        });
    }
}

/// Reads a request head (at most 8 KiB) and returns the path of a GET, without its query.
async fn read_request_path(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || head.len() + n > 8192 {
            return None;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = head.split(|&b| b == b'\r').next()?;
    let line = core::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    match (parts.next(), parts.next()) {
        (Some("GET"), Some(target)) => Some(target.split('?').next().unwrap_or(target).to_owned()),
        _ => None,
    }
}

/// A Prometheus text exposition under construction.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// Writes the `# HELP` / `# TYPE` header of a metric family.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        use std::fmt::Write;
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// Writes one sample; `labels` are `(name, value)` pairs, values escaped.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        use std::fmt::Write;
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                let _ = write!(self.out, "{k}=\"{v}\"");
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// A family with a single sample.
    pub fn metric(&mut self, name: &str, kind: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.family(name, kind, help);
        self.sample(name, labels, value);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut e = Exposition::default();
        e.metric("x_total", "counter", "help", &[("agent", "a\"b")], 1.0);
        assert_eq!(e.finish(), "# HELP x_total help\n# TYPE x_total counter\nx_total{agent=\"a\\\"b\"} 1\n");
    }

    #[tokio::test]
    async fn answers_a_get_and_refuses_the_rest() {
        let (listener, addr) = bind(([127, 0, 0, 1], 0).into()).await.unwrap();
        let stop = tokio_util_free_stop();
        tokio::spawn(serve(listener, |p| (p == "/metrics").then(|| ("200 OK", "text/plain", "ok\n".into())), stop));
        let ask = |req: &'static str| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        assert!(ask("GET /metrics?x=1 HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 200 OK"));
        assert!(ask("GET /nope HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 404"));
        assert!(ask("POST /metrics HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 400"));
    }

    fn tokio_util_free_stop() -> impl Future<Output = ()> {
        std::future::pending()
    }
}
