//! A whole cluster in one process: N backends and a frontend on loopback. It is the quick start
//! (`ringkv local`) and the fixture of the integration tests.

use std::net::SocketAddr;

use crate::backend::{Backend, BackendConfig};
use crate::error::Result;
use crate::frontend::{Frontend, FrontendConfig};

/// A running local cluster. Dropping it stops every server.
pub struct LocalCluster {
    frontend: Frontend,
    backends: Vec<Option<Backend>>,
}

impl LocalCluster {
    /// Starts `backends` backends on `127.0.0.1:0` from the `backend` template, then a frontend
    /// from the `frontend` template (its backend list is filled in).
    ///
    /// ```
    /// use ringkv::{BackendConfig, FrontendConfig, LocalCluster};
    /// let cluster = LocalCluster::start(3, BackendConfig::default(), FrontendConfig::default()).unwrap();
    /// let mut client = ringkv::Client::connect(&cluster.frontend_addr().to_string()).unwrap();
    /// client.put(b"k", b"v").unwrap();
    /// assert_eq!(client.get(b"k").unwrap(), Some(b"v".to_vec()));
    /// ```
    pub fn start(
        backends: usize,
        backend: BackendConfig,
        frontend: FrontendConfig,
    ) -> Result<LocalCluster> {
        let mut started = Vec::with_capacity(backends);
        for _ in 0..backends {
            let config = BackendConfig {
                listen: "127.0.0.1:0".into(),
                ..backend.clone()
            };
            started.push(Backend::start(config)?);
        }
        let frontend = Frontend::start(FrontendConfig {
            backends: started.iter().map(|b| b.local_addr().to_string()).collect(),
            ..frontend
        })?;
        Ok(LocalCluster {
            frontend,
            backends: started.into_iter().map(Some).collect(),
        })
    }

    /// The frontend's address.
    pub fn frontend_addr(&self) -> SocketAddr {
        self.frontend.local_addr()
    }

    /// The frontend.
    pub fn frontend(&self) -> &Frontend {
        &self.frontend
    }

    /// The backends' addresses, in view order (stopped ones included).
    pub fn backend_addrs(&self) -> Vec<String> {
        self.frontend.view().nodes.clone()
    }

    /// Stops backend `index` as a crash would look from outside: its listener and connections
    /// close at once.
    pub fn kill_backend(&mut self, index: usize) {
        if let Some(mut backend) = self.backends.get_mut(index).and_then(Option::take) {
            backend.shutdown();
        }
    }

    /// Stops everything.
    pub fn shutdown(&mut self) {
        self.frontend.shutdown();
        for backend in self.backends.iter_mut().flatten() {
            backend.shutdown();
        }
    }
}
