//! A TCP relay between one gateway and the collector that the demo can cut, to show an uplink
//! outage: while cut it drops every open connection and refuses new ones, as a dead cellular
//! link would.

use std::{net::SocketAddr, sync::Arc};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// The switch of a running relay. Cheap to clone.
#[derive(Clone)]
pub struct Link {
    up: Arc<watch::Sender<bool>>,
}

impl Link {
    /// Starts relaying from a free loopback port to `target`; returns the port's address.
    pub async fn start(target: SocketAddr) -> std::io::Result<(Link, SocketAddr)> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (up, _) = watch::channel(true);
        let up = Arc::new(up);
        let link = Link { up: up.clone() };
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let mut state = up.subscribe();
                if !*state.borrow() {
                    continue; // cut: the connection is dropped at once
                }
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else { return };
                    let (mut a, mut b) = (inbound, outbound);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                        _ = state.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Ok((link, addr))
    }

    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    pub fn restore(&self) {
        self.up.send_replace(true);
    }

    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }
}
