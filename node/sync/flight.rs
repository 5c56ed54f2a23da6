//! Bodies in flight: what a relay is still receiving, so it can serve a body's verified
//! prefix to its children while the rest arrives (cut-through forwarding).
//!
//! The parent side says which bodies of a release it is about to fetch ([`Flights::expect`]:
//! a list of manifest indexes, 4 bytes a body, not a slot each: a first sync of a million
//! files expects a million), registers each one as its request starts ([`Flights::start`]),
//! and reports its verified length as chunks pass their check; the children side follows
//! that watermark ([`Flights::get`]), from before the request starts if need be, and never
//! sends a byte beyond it. A flight ends [`Flight::Done`] once the body is in the store, or
//! [`Flight::Failed`] when its fetch is abandoned (the child's request then fails and is
//! retried with the release).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::tree::{Blake3, ByBody, Manifest};

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

/// One body being received, or followed before its request started. Its channel is made
/// only when someone asks to follow it (a channel costs some 400 bytes, a slot 56).
#[derive(Debug)]
struct Slot {
    /// Which registration this is (a newer one of the same body takes the slot over);
    /// [`WAITING`] while only a follower made the slot.
    generation: u64,
    verified: u64,
    follow: Option<watch::Sender<Flight>>,
}

/// The generation of a slot a follower made for a body whose request has not started.
const WAITING: u64 = 0;

/// The bodies of one fetch, expected but not all started yet.
#[derive(Debug)]
struct Coming {
    key: u64,
    manifest: Manifest,
    /// Manifest indexes of the bodies, sorted by body.
    by_body: ByBody,
    /// One bit per position of `by_body`: its request started.
    started: Vec<u64>,
}

impl Coming {
    fn position(&self, id: &Blake3) -> Option<usize> {
        self.by_body.position(id, |i| self.manifest.body_key(i))
    }

    fn is_started(&self, at: usize) -> bool {
        self.started[at / 64] & (1 << (at % 64)) != 0
    }

    /// Whether `id` is expected and its request has not started.
    fn pending(&self, id: &Blake3) -> bool {
        self.position(id).is_some_and(|at| !self.is_started(at))
    }

    fn mark_started(&mut self, id: &Blake3) {
        if let Some(at) = self.position(id) {
            self.started[at / 64] |= 1 << (at % 64);
        }
    }
}

#[derive(Debug, Default)]
struct Registry {
    slots: HashMap<Blake3, Slot>,
    next: u64,
    coming: Vec<Coming>,
}

/// The registry of bodies this node is receiving.
#[derive(Debug, Clone, Default)]
pub struct Flights(Arc<Mutex<Registry>>);

impl Flights {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.0.lock().expect("flights lock")
    }

    /// Says that the files of `manifest` at `indexes` are about to be fetched: children may
    /// follow their bodies from now on. Until the returned guard is dropped; then a body
    /// whose request never started fails for whoever follows it.
    pub fn expect(&self, manifest: &Manifest, indexes: &[u32]) -> Expecting {
        let by_body = ByBody::new(indexes.to_vec(), |i| manifest.body_key(i));
        let mut r = self.lock();
        r.next += 1;
        let key = r.next;
        r.coming.push(Coming {
            key,
            manifest: manifest.clone(),
            started: vec![0; by_body.len().div_ceil(64)],
            by_body,
        });
        Expecting {
            key,
            flights: self.clone(),
        }
    }

    /// Registers `id` as being received. A newer registration of a body takes over from an
    /// older one: whoever follows the body follows the newer fetch, and the older ending
    /// changes nothing.
    pub fn start(&self, id: Blake3) -> FlightHandle {
        let mut r = self.lock();
        r.next += 1;
        let generation = r.next;
        for c in &mut r.coming {
            c.mark_started(&id);
        }
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

    /// Whether `id` is being received or about to be.
    pub fn has(&self, id: &Blake3) -> bool {
        let r = self.lock();
        r.slots.contains_key(id) || r.coming.iter().any(|c| c.pending(id))
    }

    /// Follows the flight of `id`, if it is being received or about to be.
    pub fn get(&self, id: &Blake3) -> Option<watch::Receiver<Flight>> {
        let mut r = self.lock();
        if !r.slots.contains_key(id) && r.coming.iter().any(|c| c.pending(id)) {
            r.slots.insert(
                *id,
                Slot {
                    generation: WAITING,
                    verified: 0,
                    follow: None,
                },
            );
        }
        let slot = r.slots.get_mut(id)?;
        let verified = slot.verified;
        let tx = slot
            .follow
            .get_or_insert_with(|| watch::channel(Flight::Receiving { verified }).0);
        Some(tx.subscribe())
    }

    /// The size of `id`, if a fetch expects it (started or not).
    pub fn size(&self, id: &Blake3) -> Option<u64> {
        let r = self.lock();
        r.coming.iter().find_map(|c| {
            let i = c.by_body.items()[c.position(id)?];
            c.manifest.entries()[i as usize]
                .body()
                .map(|(size, _)| size)
        })
    }

    /// Bodies being received (or followed before their request started).
    pub fn len(&self) -> usize {
        self.lock().slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The bodies one fetch expects ([`Flights::expect`]), until dropped.
#[derive(Debug)]
pub struct Expecting {
    key: u64,
    flights: Flights,
}

impl Drop for Expecting {
    fn drop(&mut self) {
        let mut r = self.flights.lock();
        let Some(at) = r.coming.iter().position(|c| c.key == self.key) else {
            return;
        };
        let coming = r.coming.swap_remove(at);
        // Followers of bodies never asked for: nobody will send them now.
        let Registry {
            slots,
            coming: others,
            ..
        } = &mut *r;
        slots.retain(|id, slot| {
            let orphan = slot.generation == WAITING
                && coming.pending(id)
                && !others.iter().any(|c| c.pending(id));
            if orphan {
                if let Some(tx) = &slot.follow {
                    tx.send_replace(Flight::Failed);
                }
            }
            !orphan
        });
        if slots.is_empty() {
            // A first sync may have had many at once: give the table's room back.
            *slots = HashMap::new();
        }
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
        self.generation = WAITING;
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
        // (A handle's generation is never `WAITING`, except once it is done.)
        if self.generation != WAITING {
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

    /// Three files with bodies a, b, c, and the flights expecting them.
    fn expecting() -> (Flights, Expecting, [Blake3; 3]) {
        use crate::tree::manifest::fixtures::file;
        let m = Manifest::from_entries(vec![file("a", b"a"), file("b", b"b"), file("c", b"c")])
            .unwrap();
        let ids = [b"a", b"b", b"c"].map(|b| Blake3::of(b));
        let flights = Flights::default();
        let guard = flights.expect(&m, &[0, 1, 2]);
        (flights, guard, ids)
    }

    #[test]
    fn an_expected_body_is_followed_before_its_request_starts() {
        let (flights, guard, [a, b, c]) = expecting();
        assert!(flights.has(&a) && flights.has(&c));
        assert!(!flights.has(&Blake3::of(b"d")) && flights.get(&Blake3::of(b"d")).is_none());
        // No slot a body until someone follows or fetches it.
        assert_eq!(flights.len(), 0);
        assert_eq!(
            flights.size(&b),
            Some(1),
            "its size is known before it starts"
        );
        assert_eq!(flights.size(&Blake3::of(b"d")), None);
        let rx = flights.get(&b).unwrap();
        assert_eq!(*rx.borrow(), Flight::Receiving { verified: 0 });
        let h = flights.start(b);
        h.progress(3);
        assert_eq!(*rx.borrow(), Flight::Receiving { verified: 3 });
        assert_eq!(flights.size(&b), Some(1), "and while it arrives");
        h.done();
        assert_eq!(*rx.borrow(), Flight::Done);
        // Started and done: in the store now, no longer coming.
        assert!(!flights.has(&b) && flights.get(&b).is_none());
        // The fetch ends without asking for `c`: whoever waits for it is told.
        let rx = flights.get(&c).unwrap();
        let ha = flights.start(a);
        drop(guard);
        assert_eq!(*rx.borrow(), Flight::Failed);
        assert!(!flights.has(&c));
        // A body under way is the fetch's own to end.
        assert!(flights.has(&a));
        ha.done();
        assert!(flights.is_empty());
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
