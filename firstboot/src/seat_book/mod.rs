//! Server seats after formation (SPEC 4.4): a book kept in the cluster's own etcd, as the ConfigMap `kube-system/firstboot-seats`.
//!
//! The bootstrap election (4.2) grants the first seats, because there is no cluster yet. Once the
//! init node serves, K3s's etcd is the strongly consistent store that survives the loss of any
//! minority of servers, so seat decisions made after formation live there: [`SeatBook`] (seat
//! holders, the one join in progress, removed nodes) is the ConfigMap's content, and every change
//! is a read-modify-write with the apiserver's resourceVersion compare-and-swap ([`SeatStore`],
//! through `k3s kubectl` on a serving server): a writer whose read is stale gets a Conflict (409),
//! reads again and decides again. So two servers granting at once cannot both succeed, a grant
//! holds once written even if its writer dies the next moment, and the book's own rules
//! ([`book`]) keep at most `servers` holders and one join at a time.
//!
//! Layout: [`book`] (the pure rules), [`keeper`] (what a serving server decides each round, and
//! the round through the store), [`kubectl`] (running `k3s kubectl`, its errors), [`store`] (the
//! ConfigMap and the CAS loop).
//!
//! In a full run every serving server runs a [`SeatKeeper`] round every 3 s (the daemon, in
//! `lifecycle`): the init creates the book holding its own seat before it grants any other, and
//! from then on every seat (during formation too) is written to the book before the election
//! tells the node (`SeatGranted`, or the init's roster). `--until role` runs (no K3s) keep the
//! election's own grants.
//!
//! A dead server's seat is released by the healer ([`crate::healer`]) once its Node and etcd
//! member are gone; until then a keeper keeps new cards waiting for it
//! ([`Decision::Replacing`]) rather than sending them to agent roles. With no card asking, the
//! healer grants it to an agent (a promotion, [`crate::healer::promotion`]): the daemon's keeper
//! rounds tell the pending agent with `SeatGranted` while its record still says `agent`.
//!
//! A card asking under the name of a Node K3s still has (a re-flashed card) is told nothing
//! until the healer deleted that Node ([`crate::healer::reflash`]); a former server then gets
//! its seat again as a new join ([`SeatBook::rejoin`]).
//!
//! Not yet done (issue 18): a cluster formed by an older firstboot (no book) grants no seat
//! after formation; a pending joiner that dies is released only by the healer, after
//! `replace_after`.

pub mod book;
pub mod keeper;
pub mod kubectl;
pub mod store;

pub use book::{GrantRefused, PendingJoin, RemovedNode, SeatBook, SeatHolder};
pub use keeper::{Asker, Decision, SeatKeeper};
pub use kubectl::{Kubectl, KubectlError, Run};
pub use store::{SeatStore, StoreError, Updated, CONFIGMAP_NAME, CONFIGMAP_NAMESPACE};
