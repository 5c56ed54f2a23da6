//! Bodies in flight: what a relay is still receiving, so it can serve a body's verified
//! prefix to its children while the rest arrives (cut-through forwarding).
//!
//! The parent side registers every body of a release it starts fetching ([`Flights::start`])
//! and reports each one's verified length as chunks pass their check; the children side
//! follows that watermark ([`Flights::get`]) and never sends a byte beyond it. A flight ends
//! [`Flight::Done`] once the body is in the store under its MD5, or [`Flight::Failed`] when its
//! fetch is abandoned (the child's request then fails and is retried with the release).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::tree::Blake3;

/// Where a body being received stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flight {
    /// Bytes `..verified` are checked and on disk in the store's partial file.
    Receiving { verified: u64 },
    /// The body is in the store, complete and verified.
    Done,
    /// The fetch was abandoned.
    Failed,
}

/// One registered body. Its channel is made only when someone asks to follow it: a fetch
/// registers every body of a release at once (a first sync of a million files registers a
/// million), and a channel costs some 400 bytes where a slot costs 56.
#[derive(Debug)]
struct Slot {
    /// Which registration this is (a newer one of the same body takes the slot over).
    generation: u64,
    verified: u64,
    follow: Option<watch::Sender<Flight>>,
}

#[derive(Debug, Default)]
struct Registry {
    slots: HashMap<Blake3, Slot>,
    next: u64,
}

/// The registry of bodies this node is receiving.
#[derive(Debug, Clone, Default)]
pub struct Flights(Arc<Mutex<Registry>>);

impl Flights {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.0.lock().expect("flights lock")
    }

    /// Registers `id` as coming. A newer registration of a body takes over from an older
    /// one: whoever follows the body follows the newer fetch, and the older ending changes
    /// nothing.
    pub fn start(&self, id: Blake3) -> FlightHandle {
        let mut r = self.lock();
        r.next += 1;
        let generation = r.next;
        let slot = r.slots.entry(id).or_insert(Slot {
            generation,
            verified: 0,
            follow: None,
        });
        slot.generation = generation;
        FlightHandle {
            id,
            generation,
            flights: self.clone(),
        }
    }

    /// Whether `id` is being received.
    pub fn has(&self, id: &Blake3) -> bool {
        self.lock().slots.contains_key(id)
    }

    /// Follows the flight of `id`, if it is being received.
    pub fn get(&self, id: &Blake3) -> Option<watch::Receiver<Flight>> {
        let mut r = self.lock();
        let slot = r.slots.get_mut(id)?;
        let verified = slot.verified;
        let tx = slot
            .follow
            .get_or_insert_with(|| watch::channel(Flight::Receiving { verified }).0);
        Some(tx.subscribe())
    }

    pub fn len(&self) -> usize {
        self.lock().slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The receiving side of one flight. Dropped before [`FlightHandle::done`], the flight fails.
#[derive(Debug)]
pub struct FlightHandle {
    id: Blake3,
    generation: u64,
    flights: Flights,
}

impl FlightHandle {
    pub fn id(&self) -> Blake3 {
        self.id
    }

    /// Bytes `..verified` may now be served.
    pub fn progress(&self, verified: u64) {
        let mut r = self.flights.lock();
        let Some(slot) = r.slots.get_mut(&self.id) else {
            return;
        };
        if slot.generation != self.generation || slot.verified >= verified {
            return;
        }
        slot.verified = verified;
        // (A channel says Receiving for as long as its slot is there, at most `verified`.)
        if let Some(tx) = &slot.follow {
            tx.send_replace(Flight::Receiving { verified });
        }
    }

    /// The body is in the store.
    pub fn done(mut self) {
        self.end(Flight::Done);
        self.generation = 0;
    }

    fn end(&self, how: Flight) {
        let mut r = self.flights.lock();
        if r.slots
            .get(&self.id)
            .is_some_and(|s| s.generation == self.generation)
        {
            if let Some(tx) = r.slots.remove(&self.id).and_then(|s| s.follow) {
                tx.send_replace(how);
            }
        }
    }
}

impl Drop for FlightHandle {
    fn drop(&mut self) {
        // (Generation 0 is never registered: a handle that is done has nothing left to end.)
        if self.generation != 0 {
            self.end(Flight::Failed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flight_reports_progress_then_ends_and_leaves_the_registry() {
        let flights = Flights::default();
        let id = Blake3::of(b"x");
        let h = flights.start(id);
        let rx = flights.get(&id).unwrap();
        h.progress(10);
        h.progress(5); // never backwards
        assert_eq!(*rx.borrow(), Flight::Receiving { verified: 10 });
        h.done();
        assert_eq!(*rx.borrow(), Flight::Done);
        assert!(flights.get(&id).is_none());

        let h = flights.start(id);
        let rx = flights.get(&id).unwrap();
        drop(h);
        assert_eq!(*rx.borrow(), Flight::Failed);
        assert!(flights.is_empty());

        // An older handle ending does not remove a newer registration.
        let old = flights.start(id);
        let _new = flights.start(id);
        drop(old);
        assert_eq!(flights.len(), 1);
    }

    #[test]
    fn a_follower_starts_at_the_watermark_and_follows_a_newer_registration_to_its_end() {
        let flights = Flights::default();
        let id = Blake3::of(b"y");
        let old = flights.start(id);
        old.progress(7);
        // Nobody followed yet: the channel is made now, at what is verified.
        let rx = flights.get(&id).unwrap();
        assert_eq!(*rx.borrow(), Flight::Receiving { verified: 7 });
        let new = flights.start(id);
        drop(old); // the older fetch failing is not the body failing
        assert_eq!(*rx.borrow(), Flight::Receiving { verified: 7 });
        assert!(flights.has(&id));
        new.progress(9);
        assert_eq!(*rx.borrow(), Flight::Receiving { verified: 9 });
        new.done();
        assert_eq!(*rx.borrow(), Flight::Done);
        assert!(!flights.has(&id));
    }
}
