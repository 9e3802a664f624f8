//! The seat book as the ConfigMap `kube-system/firstboot-seats`, changed only by compare-and-swap on its resourceVersion.

use super::book::SeatBook;
use super::kubectl::{KubectlError, Run};
use serde_json::json;
use std::sync::Arc;

/// The ConfigMap's name.
pub const CONFIGMAP_NAME: &str = "firstboot-seats";
/// Its namespace.
pub const CONFIGMAP_NAMESPACE: &str = "kube-system";
/// The data key holding the book's JSON.
const DATA_KEY: &str = "seats.json";
/// Conflicts tolerated in one update before giving up (each means another writer won a round).
const MAX_ATTEMPTS: usize = 50;

/// The seat book in the cluster's etcd, through `k3s kubectl` on a serving server.
#[derive(Clone, Debug)]
pub struct SeatStore {
    kubectl: Arc<dyn Run>,
}

/// What one [`SeatStore::update`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Updated<T> {
    /// The book as stored when the update ended (written by us, or read unchanged).
    pub book: SeatBook,
    /// What the decision returned on the book it was finally made on.
    pub outcome: T,
    /// Whether this call wrote the book.
    pub wrote: bool,
    /// Writes lost to another writer (409 Conflict, or a create that found the map) and redone.
    pub conflicts: usize,
}

/// Why the store could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// kubectl failed for another reason than a lost race.
    #[error("updating the ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME}: {0}")]
    Kubectl(#[from] KubectlError),
    /// The ConfigMap holds something that is not a seat book.
    #[error("the ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME} does not hold a seat book ({0}); delete it only if no server join is in progress")]
    Corrupt(String),
    /// Other writers kept winning.
    #[error("gave up after {0} conflicting writes to {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME}")]
    Contended(usize),
}

impl SeatStore {
    /// A store reached through `kubectl` (a [`super::Kubectl`] in the product).
    pub fn new(kubectl: impl Run + 'static) -> SeatStore {
        SeatStore::shared(Arc::new(kubectl))
    }

    /// A store reached through a runner shared with other users (the healer's).
    pub fn shared(kubectl: Arc<dyn Run>) -> SeatStore {
        SeatStore { kubectl }
    }

    /// The kubectl runner this store uses (for the other reads of a round, e.g. the Nodes).
    pub fn runner(&self) -> &dyn Run {
        &*self.kubectl
    }

    /// The book and its resourceVersion; `None` before the first write.
    pub fn read(&self) -> Result<Option<(SeatBook, String)>, StoreError> {
        let map = match self.kubectl.json(
            &[
                "get",
                "configmap",
                CONFIGMAP_NAME,
                "-n",
                CONFIGMAP_NAMESPACE,
                "-o",
                "json",
            ],
            None,
        ) {
            Ok(map) => map,
            Err(KubectlError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let version = map["metadata"]["resourceVersion"]
            .as_str()
            .ok_or_else(|| StoreError::Corrupt("no resourceVersion".into()))?
            .to_string();
        let text = map["data"][DATA_KEY]
            .as_str()
            .ok_or_else(|| StoreError::Corrupt(format!("no data key {DATA_KEY}")))?;
        let book = serde_json::from_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(Some((book, version)))
    }

    /// Writes `book` if the stored version is still `version` (`None`: create it); a lost race
    /// is `KubectlError::Conflict` or `KubectlError::AlreadyExists`.
    pub fn write(&self, book: &SeatBook, version: Option<&str>) -> Result<(), StoreError> {
        let text = serde_json::to_string(book).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut map = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": CONFIGMAP_NAME, "namespace": CONFIGMAP_NAMESPACE},
            "data": {DATA_KEY: text},
        });
        let verb = match version {
            Some(v) => {
                map["metadata"]["resourceVersion"] = json!(v);
                "replace"
            }
            None => "create",
        };
        let body = map.to_string();
        self.kubectl
            .json(&[verb, "-f", "-", "-o", "json"], Some(body.as_bytes()))?;
        Ok(())
    }

    /// Reads the book (`initial` when none is stored yet), lets `decide` choose the next book
    /// and writes it by compare-and-swap; on a lost race it reads again and decides again, so
    /// the decision is always made on the book it replaces. `decide` returns what to report and
    /// the next book, or `None` to leave the book as it is.
    pub fn update<T>(
        &self,
        initial: impl Fn() -> SeatBook,
        decide: impl FnMut(&SeatBook) -> (T, Option<SeatBook>),
    ) -> Result<Updated<T>, StoreError> {
        self.update_from(Some(&initial), decide)
            .map(|updated| updated.expect("an initial book is given"))
    }

    /// [`SeatStore::update`] on a book that exists: `None` (nothing decided, nothing written)
    /// while none is stored, for writers that must never create it.
    pub fn update_existing<T>(
        &self,
        decide: impl FnMut(&SeatBook) -> (T, Option<SeatBook>),
    ) -> Result<Option<Updated<T>>, StoreError> {
        self.update_from(None, decide)
    }

    fn update_from<T>(
        &self,
        initial: Option<&dyn Fn() -> SeatBook>,
        mut decide: impl FnMut(&SeatBook) -> (T, Option<SeatBook>),
    ) -> Result<Option<Updated<T>>, StoreError> {
        let mut conflicts = 0;
        while conflicts < MAX_ATTEMPTS {
            let (book, version) = match (self.read()?, initial) {
                (Some((book, version)), _) => (book, Some(version)),
                (None, Some(initial)) => (initial(), None),
                (None, None) => return Ok(None),
            };
            let (outcome, next) = decide(&book);
            let Some(next) = next.filter(|next| *next != book || version.is_none()) else {
                return Ok(Some(Updated {
                    book,
                    outcome,
                    wrote: false,
                    conflicts,
                }));
            };
            match self.write(&next, version.as_deref()) {
                Ok(()) => {
                    return Ok(Some(Updated {
                        book: next,
                        outcome,
                        wrote: true,
                        conflicts,
                    }))
                }
                Err(StoreError::Kubectl(
                    KubectlError::Conflict(_) | KubectlError::AlreadyExists(_),
                )) => conflicts += 1,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Contended(conflicts))
    }
}
