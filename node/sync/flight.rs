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

/// The registry of bodies this node is receiving.
#[derive(Debug, Clone, Default)]
pub struct Flights(Arc<Mutex<HashMap<Blake3, watch::Receiver<Flight>>>>);

impl Flights {
    /// Registers `id` as coming (a newer registration replaces an older one).
    pub fn start(&self, id: Blake3) -> FlightHandle {
        let (tx, rx) = watch::channel(Flight::Receiving { verified: 0 });
        self.0.lock().expect("flights lock").insert(id, rx);
        FlightHandle {
            id,
            tx,
            flights: self.clone(),
        }
    }

    /// The flight of `id`, if it is being received.
    pub fn get(&self, id: &Blake3) -> Option<watch::Receiver<Flight>> {
        self.0.lock().expect("flights lock").get(id).cloned()
    }

    pub fn len(&self) -> usize {
        self.0.lock().expect("flights lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The receiving side of one flight. Dropped before [`FlightHandle::done`], the flight fails.
#[derive(Debug)]
pub struct FlightHandle {
    id: Blake3,
    tx: watch::Sender<Flight>,
    flights: Flights,
}

impl FlightHandle {
    pub fn id(&self) -> Blake3 {
        self.id
    }

    /// Bytes `..verified` may now be served.
    pub fn progress(&self, verified: u64) {
        self.tx.send_if_modified(|f| match f {
            Flight::Receiving { verified: v } if *v < verified => {
                *v = verified;
                true
            }
            _ => false,
        });
    }

    /// The body is in the store.
    pub fn done(self) {
        self.end(Flight::Done);
    }

    fn end(&self, how: Flight) {
        self.tx.send_replace(how);
        let mut map = self.flights.0.lock().expect("flights lock");
        if map
            .get(&self.id)
            .is_some_and(|rx| rx.same_channel(&self.tx.subscribe()))
        {
            map.remove(&self.id);
        }
    }
}

impl Drop for FlightHandle {
    fn drop(&mut self) {
        if *self.tx.borrow() != Flight::Done {
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
}
