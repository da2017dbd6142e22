//! A whole cluster in one process: N backends and a frontend on loopback. It is the quick start
//! (`ringkv local`) and the fixture of the integration tests.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::backend::{Backend, BackendConfig};
use crate::error::Result;
use crate::frontend::{Frontend, FrontendConfig};
use crate::metrics::{MetricsServer, Sources};

/// A running local cluster. Dropping it stops every server.
pub struct LocalCluster {
    frontend: Frontend,
    backends: Vec<Option<Backend>>,
    /// The parts its metrics endpoint reports, and each backend's id there (a stopped backend
    /// is taken out).
    metrics_sources: Arc<Sources>,
    backend_sources: Vec<u64>,
    /// The one endpoint for every part, with the frontend template's `metrics_listen`.
    metrics: Option<MetricsServer>,
}

impl LocalCluster {
    /// Starts `backends` backends on `127.0.0.1:0` from the `backend` template, then a frontend
    /// from the `frontend` template (its backend list is filled in).
    ///
    /// With a `data_dir` in the template, backend N keeps its log in `data_dir/backend-N` and
    /// the address it first listened on in `data_dir/backend-N/address`; started again over
    /// the same directory it listens there again, so the ring, and with it which backend owns
    /// which key, is the same as before.
    ///
    /// With a `metrics_listen` in the frontend template, one metrics endpoint there reports the
    /// frontend and every backend (told apart by their `role` and `node` labels); the parts
    /// serve none of their own, and the backend template's `metrics_listen` is not used.
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
        mut frontend: FrontendConfig,
    ) -> Result<LocalCluster> {
        let metrics_listen = frontend.metrics_listen.take();
        let mut started = Vec::with_capacity(backends);
        for index in 0..backends {
            let config = BackendConfig {
                listen: "127.0.0.1:0".into(),
                metrics_listen: None,
                ..backend.clone()
            };
            started.push(match &backend.data_dir {
                Some(root) => start_remembered(config, &root.join(format!("backend-{index}")))?,
                None => Backend::start(config)?,
            });
        }
        let frontend = Frontend::start(FrontendConfig {
            backends: started.iter().map(|b| b.local_addr().to_string()).collect(),
            ..frontend
        })?;
        let metrics_sources = Arc::new(Sources::default());
        metrics_sources.add(frontend.metrics_source());
        let backend_sources = started
            .iter()
            .map(|backend| metrics_sources.add(backend.metrics_source()))
            .collect();
        let metrics = match metrics_listen {
            Some(addr) => Some(MetricsServer::start(&addr, Arc::clone(&metrics_sources))?),
            None => None,
        };
        Ok(LocalCluster {
            frontend,
            backends: started.into_iter().map(Some).collect(),
            metrics_sources,
            backend_sources,
            metrics,
        })
    }

    /// The address of the metrics endpoint, when the frontend template asked for one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(MetricsServer::local_addr)
    }

    /// The frontend's address.
    pub fn frontend_addr(&self) -> SocketAddr {
        self.frontend.local_addr()
    }

    /// The address of the frontend's Redis-protocol door, when the frontend template asked
    /// for one (`FrontendConfig::resp_listen`).
    pub fn resp_addr(&self) -> Option<SocketAddr> {
        self.frontend.resp_addr()
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
            self.metrics_sources.remove(self.backend_sources[index]);
            backend.shutdown();
        }
    }

    /// Stops everything.
    pub fn shutdown(&mut self) {
        if let Some(metrics) = &mut self.metrics {
            metrics.shutdown();
        }
        self.frontend.shutdown();
        for backend in self.backends.iter_mut().flatten() {
            backend.shutdown();
        }
    }
}

/// The file in a backend's data directory that holds the address it listens on.
const ADDRESS_FILE: &str = "address";

/// Starts a backend over `dir`, on the address recorded there if there is one, else on a fresh
/// port that is then recorded.
fn start_remembered(config: BackendConfig, dir: &std::path::Path) -> Result<Backend> {
    let address_file = dir.join(ADDRESS_FILE);
    let storage_error = |source: std::io::Error| {
        crate::error::Error::Storage(crate::wal::OpenError::Io {
            path: address_file.clone(),
            source,
        })
    };
    let remembered = match std::fs::read_to_string(&address_file) {
        Ok(text) => Some(text.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(storage_error(e)),
    };
    let config = BackendConfig {
        data_dir: Some(dir.to_path_buf()),
        listen: remembered.clone().unwrap_or(config.listen),
        ..config
    };
    let backend = Backend::start(config).map_err(|e| match (&remembered, e) {
        (Some(addr), crate::error::Error::Bind { source, .. }) => {
            crate::error::Error::Config(format!(
                "the backend in {} listened on {addr} before and must do so again for the \
                 cluster to find its keys, but cannot: {source}",
                dir.display()
            ))
        }
        (_, e) => e,
    })?;
    if remembered.is_none() {
        // Written whole or not at all, so a crash here cannot leave a half address behind.
        let temp = dir.join(format!("{ADDRESS_FILE}.tmp"));
        std::fs::write(&temp, format!("{}\n", backend.local_addr()))
            .and_then(|()| std::fs::File::open(&temp)?.sync_all())
            .and_then(|()| std::fs::rename(&temp, &address_file))
            .and_then(|()| std::fs::File::open(dir)?.sync_all())
            .map_err(storage_error)?;
    }
    Ok(backend)
}
