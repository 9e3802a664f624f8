//! The persist-gated outbox: the election's safety mechanism between its state and the wire.
//!
//! Paxos is safe only if an acceptor never reveals a promise or an acceptance it could forget: a
//! reply must leave only once the state it depends on is on disk. So every state change asks for
//! a persist ([`Outbox::persist`], numbered by a sequence), every frame or event that depends on
//! it waits under that number ([`Outbox::send_after_persist`], [`Outbox::emit_after_persist`]),
//! and the driver's acknowledgement ([`Outbox::persisted`]) releases what it covers, in order.
//! Only refusals (`Nack`, which reveal nothing new) and reports of what is already durable skip
//! the gate ([`Outbox::send_now`], [`Outbox::emit_now`]).

use std::collections::VecDeque;

use super::api::{Event, Transmit};

/// Something that leaves the core.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Output {
    Transmit(Transmit),
    Event(Event),
}

/// Frames and events, each held until the state it depends on is durable.
#[derive(Debug)]
pub(super) struct Outbox {
    /// The sequence number of the latest state change.
    wanted_seq: u64,
    /// The highest sequence number the driver acknowledged as durable.
    durable_seq: u64,
    /// A persist was asked for and not yet polled.
    persist_due: bool,
    /// Outputs waiting for their sequence number to become durable, in order.
    held: VecDeque<(u64, Output)>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    /// Whether outputs wait for the persist at all (`false` only under a deliberately broken rule).
    gated: bool,
}

impl Outbox {
    /// An empty outbox; `gated` is [`Rules::release_after_persist`](super::Rules::release_after_persist).
    pub(super) fn new(gated: bool) -> Outbox {
        Outbox {
            wanted_seq: 0,
            durable_seq: 0,
            persist_due: false,
            held: VecDeque::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            gated,
        }
    }

    /// The state changed: it must be persisted before anything sent after this call leaves.
    pub(super) fn persist(&mut self) {
        self.wanted_seq += 1;
        self.persist_due = true;
    }

    /// The sequence number to persist the current state under, once per batch of changes.
    pub(super) fn poll_persist(&mut self) -> Option<u64> {
        if !self.persist_due {
            return None;
        }
        self.persist_due = false;
        Some(self.wanted_seq)
    }

    /// The state of persist request `seq` is durable: release everything it covers, in order.
    pub(super) fn persisted(&mut self, seq: u64) {
        self.durable_seq = self.durable_seq.max(seq);
        let held = std::mem::take(&mut self.held);
        for (needs, output) in held {
            if needs <= self.durable_seq {
                self.release(output);
            } else {
                self.held.push_back((needs, output));
            }
        }
    }

    /// Sends `transmit` at once: only for frames that reveal no state (a refusal).
    pub(super) fn send_now(&mut self, transmit: Transmit) {
        self.transmits.push_back(transmit);
    }

    /// Sends `transmit` once every state change so far is durable.
    pub(super) fn send_after_persist(&mut self, transmit: Transmit) {
        self.release_or_hold(Output::Transmit(transmit));
    }

    /// Reports `event` at once: only for what is already durable or reveals no state.
    pub(super) fn emit_now(&mut self, event: Event) {
        self.events.push_back(event);
    }

    /// Reports `event` once every state change so far is durable.
    pub(super) fn emit_after_persist(&mut self, event: Event) {
        self.release_or_hold(Output::Event(event));
    }

    /// The next frame allowed to leave.
    pub(super) fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event allowed to be acted on.
    pub(super) fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn release_or_hold(&mut self, output: Output) {
        if self.durable_seq >= self.wanted_seq || !self.gated {
            self.release(output);
        } else {
            self.held.push_back((self.wanted_seq, output));
        }
    }

    fn release(&mut self, output: Output) {
        match output {
            Output::Transmit(transmit) => self.transmits.push_back(transmit),
            Output::Event(event) => self.events.push_back(event),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::election::{Destination, NodeId, Role, Value};

    fn frame(n: u8) -> Transmit {
        Transmit {
            to: Destination::All,
            frame: vec![n],
        }
    }

    fn sent(outbox: &mut Outbox) -> Vec<u8> {
        std::iter::from_fn(|| outbox.poll_transmit())
            .map(|t| t.frame[0])
            .collect()
    }

    fn events(outbox: &mut Outbox) -> Vec<Event> {
        std::iter::from_fn(|| outbox.poll_event()).collect()
    }

    #[test]
    fn nothing_leaves_before_its_state_is_durable() {
        let mut outbox = Outbox::new(true);
        outbox.persist();
        outbox.send_after_persist(frame(1));
        let role = Event::Role(Role::ClusterInit);
        outbox.emit_after_persist(role);
        assert_eq!(sent(&mut outbox), Vec::<u8>::new());
        assert_eq!(events(&mut outbox), vec![]);
        let seq = outbox.poll_persist().expect("a persist was asked for");
        assert_eq!(outbox.poll_persist(), None, "asked for once");
        outbox.persisted(seq);
        assert_eq!(sent(&mut outbox), vec![1]);
        assert_eq!(events(&mut outbox), vec![role]);
    }

    #[test]
    fn an_older_acknowledgement_releases_only_what_it_covers() {
        let mut outbox = Outbox::new(true);
        outbox.persist();
        outbox.send_after_persist(frame(1));
        let first = outbox.poll_persist().unwrap();
        // The state changes again before the first write is acknowledged.
        outbox.persist();
        outbox.send_after_persist(frame(2));
        outbox.send_after_persist(frame(3));
        let second = outbox.poll_persist().unwrap();
        assert!(second > first);
        outbox.persisted(first);
        assert_eq!(
            sent(&mut outbox),
            vec![1],
            "frame 2 depends on the second state"
        );
        // A repeated or reordered old acknowledgement releases nothing more.
        outbox.persisted(first);
        assert_eq!(sent(&mut outbox), Vec::<u8>::new());
        outbox.persisted(second);
        assert_eq!(sent(&mut outbox), vec![2, 3], "in the order sent");
    }

    #[test]
    fn changes_in_one_batch_are_persisted_once_under_the_latest_number() {
        let mut outbox = Outbox::new(true);
        outbox.persist();
        outbox.send_after_persist(frame(1));
        outbox.persist();
        outbox.send_after_persist(frame(2));
        let seq = outbox.poll_persist().unwrap();
        assert_eq!(outbox.poll_persist(), None);
        outbox.persisted(seq);
        assert_eq!(sent(&mut outbox), vec![1, 2]);
    }

    #[test]
    fn with_everything_durable_frames_leave_at_once() {
        let mut outbox = Outbox::new(true);
        outbox.send_after_persist(frame(1));
        assert_eq!(sent(&mut outbox), vec![1]);
        outbox.persist();
        let seq = outbox.poll_persist().unwrap();
        outbox.persisted(seq);
        outbox.send_after_persist(frame(2));
        assert_eq!(sent(&mut outbox), vec![2]);
    }

    #[test]
    fn refusals_and_reports_of_durable_facts_skip_the_gate() {
        let mut outbox = Outbox::new(true);
        outbox.persist();
        outbox.send_after_persist(frame(1));
        outbox.send_now(frame(9));
        let raised = Event::QuorumRaised { seen: 4, quorum: 3 };
        outbox.emit_now(raised);
        assert_eq!(sent(&mut outbox), vec![9]);
        assert_eq!(events(&mut outbox), vec![raised]);
    }

    #[test]
    fn without_the_gate_a_reply_would_leave_before_its_state() {
        // The deliberately broken rule the simulator's self-test uses: this is what the gate prevents.
        let mut outbox = Outbox::new(false);
        outbox.persist();
        outbox.send_after_persist(frame(1));
        outbox.emit_after_persist(Event::Decided {
            epoch: 0,
            value: Value::Init(NodeId(1)),
        });
        assert_eq!(sent(&mut outbox), vec![1]);
        assert_eq!(events(&mut outbox).len(), 1);
        assert!(
            outbox.poll_persist().is_some(),
            "the state is still persisted"
        );
    }
}
