//! [`Multi`]: several backends asked together, results merged.

use std::sync::Arc;

use tokio::task::JoinSet;

use crate::{BoxFuture, Discovered, Discovery, Error};

/// Asks several backends concurrently and merges their answers.
///
/// Candidates are de-duplicated by gossip address; where two backends know the same address,
/// the node ID and QUIC port are taken from whichever knows them (earlier backends first).
/// A failing backend does not hide the others: its error is reported in
/// [`Discovered::skipped`] as [`Error::Backend`] naming it, and the round fails with
/// [`Error::AllBackendsFailed`] only when every backend failed.
#[derive(Debug, Clone, Default)]
pub struct Multi {
    backends: Vec<Arc<dyn Discovery>>,
}

impl Multi {
    /// A combination of `backends`, asked in this order of precedence.
    pub fn new(backends: Vec<Arc<dyn Discovery>>) -> Self {
        Self { backends }
    }

    /// Adds a backend with the lowest precedence so far.
    pub fn push(&mut self, backend: Arc<dyn Discovery>) {
        self.backends.push(backend);
    }

    /// The number of backends.
    pub fn len(&self) -> usize {
        self.backends.len()
    }

    /// Whether there is no backend.
    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    async fn run(&self) -> Result<Discovered, Error> {
        let mut set = JoinSet::new();
        for (i, backend) in self.backends.iter().enumerate() {
            let backend = Arc::clone(backend);
            set.spawn(async move {
                let result = backend.discover().await;
                (i, backend.name().to_owned(), result)
            });
        }
        let mut results = Vec::with_capacity(self.backends.len());
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok(r) => results.push(r),
                // A panicking backend is a bug there; the others still count.
                Err(e) => tracing::error!(error = %e, "discovery backend task failed"),
            }
        }
        results.sort_by_key(|(i, _, _)| *i);

        let mut out = Discovered::default();
        let mut failures = Vec::new();
        let mut any_ok = false;
        for (_, name, result) in results {
            match result {
                Ok(d) => {
                    any_ok = true;
                    for c in d.candidates {
                        out.push(c);
                    }
                    out.skipped.extend(d.skipped);
                }
                Err(e) => {
                    tracing::warn!(backend = %name, error = %e, "discovery backend failed");
                    failures.push(Error::Backend {
                        backend: name,
                        source: Box::new(e),
                    });
                }
            }
        }
        if !any_ok && !self.backends.is_empty() {
            return Err(Error::AllBackendsFailed { errors: failures });
        }
        out.skipped.extend(failures);
        Ok(out)
    }
}

impl Discovery for Multi {
    fn name(&self) -> &str {
        "multi"
    }

    fn discover(&self) -> BoxFuture<'_, Result<Discovered, Error>> {
        Box::pin(self.run())
    }
}
