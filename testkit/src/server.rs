//! A service running inside the test process on port 0.

use std::net::SocketAddr;
use std::time::Duration;

use mall_common::server::Server;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::wait::eventually;

/// A running service; stopped gracefully by [`TestServer::stop`], or when the test ends.
pub struct TestServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    client: reqwest::Client,
}

impl TestServer {
    pub(crate) fn spawn(server: Server) -> Self {
        let addr = server.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stop: Some(stop),
            task: Some(task),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
        }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A client for this server (keep-alive pooled).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        self.wait_readyz(200).await;
    }

    /// Waits until `/readyz` answers `status`, and returns its body.
    pub async fn wait_readyz(&self, status: u16) -> serde_json::Value {
        eventually(
            Duration::from_secs(30),
            &format!("{} /readyz answers {status}", self.addr),
            || async {
                let res = self
                    .client
                    .get(self.url("/readyz"))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let code = res.status().as_u16();
                let body: serde_json::Value = res.json().await.map_err(|e| e.to_string())?;
                if code == status {
                    Ok(body)
                } else {
                    Err(format!("{code}: {body}"))
                }
            },
        )
        .await
    }

    /// Starts a graceful shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shuts down gracefully and returns how the server ended.
    pub async fn stop(mut self) -> std::io::Result<()> {
        self.begin_shutdown();
        match self.task.take() {
            Some(task) => task.await.map_err(std::io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.begin_shutdown();
    }
}

/// Serves `app` for the rest of the process on a thread and runtime of its own (each test has
/// its own runtime, and a server spawned on one would die with its test); its address.
pub(crate) fn serve_for_the_process(name: &str, app: axum::Router) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("non-blocking");
    let addr = listener.local_addr().expect("local addr");
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                axum::serve(listener, app).await.expect("serve");
            });
        })
        .expect("spawn the server thread");
    addr
}
