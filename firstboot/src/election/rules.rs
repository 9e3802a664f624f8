//! The safety rules the core follows, as a trait, so that only the test crate can break one.

/// The safety rules the core follows; the product uses [`Paxos`].
///
/// Each method is one rule the core's safety rests on. The simulator's self-test implements the
/// trait in the test crate with a rule broken, to prove that it catches the flaw; nothing in
/// `firstboot` implements a broken rule.
pub trait Rules: Clone + std::fmt::Debug {
    /// Votes needed to decide among `electorate` voters: a strict majority.
    fn quorum(&self, electorate: usize) -> usize {
        electorate / 2 + 1
    }

    /// Frames and events that depend on new state are released only once it is durable.
    fn release_after_persist(&self) -> bool {
        true
    }

    /// The elected node takes its role only once its Go is decided.
    fn role_waits_for_go(&self) -> bool {
        true
    }
}

/// The rules as designed: strict majorities, persist before release, cluster-init only after Go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Paxos;

impl Rules for Paxos {}
