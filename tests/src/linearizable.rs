//! A linearizability checker for one versioned register (a cache key): a
//! Wing–Gong search with memoization, as Porcupine does it. A history is
//! linearizable if its operations can be put in one order that respects
//! real time (an operation that returned before another was invoked comes
//! first) and in which each result is what the register gives at that
//! point.

use std::collections::HashSet;
use std::time::Instant;

/// What was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Set(String),
    Get,
    /// Compare-and-set: write if the version is this one.
    Cas(u64, String),
}

/// What was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Written, with this new version.
    Written(u64),
    Found(String, u64),
    Missing,
    /// A compare-and-set whose version did not match.
    Refused,
}

/// One operation as a client saw it: from invocation to answer.
#[derive(Debug, Clone)]
pub struct Event {
    pub op: Op,
    pub outcome: Outcome,
    pub called: Instant,
    pub returned: Instant,
}

/// The register: its value and version, none before the first write.
type State = Option<(String, u64)>;

/// The state after `op` answered `outcome` in `state`, if it could have.
fn step(state: &State, op: &Op, outcome: &Outcome) -> Option<State> {
    let version = state.as_ref().map_or(0, |(_, v)| *v);
    match (op, outcome) {
        (Op::Set(value), Outcome::Written(new)) if *new > version => {
            Some(Some((value.clone(), *new)))
        }
        (Op::Get, Outcome::Found(value, v)) if state.as_ref() == Some(&(value.clone(), *v)) => {
            Some(state.clone())
        }
        (Op::Get, Outcome::Missing) if state.is_none() => Some(None),
        (Op::Cas(expected, value), Outcome::Written(new))
            if state.is_some() && version == *expected && *new > version =>
        {
            Some(Some((value.clone(), *new)))
        }
        (Op::Cas(expected, _), Outcome::Refused) if state.is_none() || version != *expected => {
            Some(state.clone())
        }
        _ => None,
    }
}

/// Whether the history is linearizable, from an empty register.
pub fn linearizable(history: &[Event]) -> bool {
    let n = history.len();
    let words = n.div_ceil(64);
    let mut seen: HashSet<(Vec<u64>, State)> = HashSet::new();
    // Depth-first: (operations placed, state, next candidate to try).
    let mut stack: Vec<(Vec<u64>, State, usize)> = vec![(vec![0; words], None, 0)];
    while let Some((done, state, from)) = stack.pop() {
        let placed = |i: usize| done[i / 64] & (1 << (i % 64)) != 0;
        if (0..n).all(placed) {
            return true;
        }
        // The earliest answer among those not placed: an operation
        // invoked after it cannot come next.
        let horizon = (0..n)
            .filter(|&i| !placed(i))
            .map(|i| history[i].returned)
            .min()
            .expect("an operation left");
        for i in from..n {
            let e = &history[i];
            if placed(i) || e.called > horizon {
                continue;
            }
            let Some(next) = step(&state, &e.op, &e.outcome) else {
                continue;
            };
            let mut after = done.clone();
            after[i / 64] |= 1 << (i % 64);
            if seen.insert((after.clone(), next.clone())) {
                // Come back for the other candidates, then go deeper.
                stack.push((done.clone(), state.clone(), i + 1));
                stack.push((after, next, 0));
                break;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// An event from `a` to `b` (ms after a common start).
    fn at(start: Instant, a: u64, b: u64, op: Op, outcome: Outcome) -> Event {
        Event {
            op,
            outcome,
            called: start + Duration::from_millis(a),
            returned: start + Duration::from_millis(b),
        }
    }

    fn set(v: &str) -> Op {
        Op::Set(v.into())
    }

    fn found(v: &str, version: u64) -> Outcome {
        Outcome::Found(v.into(), version)
    }

    #[test]
    fn accepts_sequential_and_overlapping_histories() {
        let t = Instant::now();
        let sequential = [
            at(t, 0, 1, Op::Get, Outcome::Missing),
            at(t, 2, 3, set("a"), Outcome::Written(10)),
            at(t, 4, 5, Op::Get, found("a", 10)),
            at(t, 6, 7, Op::Cas(10, "b".into()), Outcome::Written(11)),
            at(t, 8, 9, Op::Cas(10, "c".into()), Outcome::Refused),
            at(t, 10, 11, Op::Get, found("b", 11)),
        ];
        assert!(linearizable(&sequential));
        // A read overlapping a write may see either side of it.
        let overlapping = [
            at(t, 0, 1, set("a"), Outcome::Written(10)),
            at(t, 2, 6, set("b"), Outcome::Written(11)),
            at(t, 3, 4, Op::Get, found("b", 11)),
            at(t, 3, 5, Op::Get, found("a", 10)),
        ];
        // "a" read after "b" was read, both inside the write: the later
        // read (by return) saw the older value; still fine, they overlap.
        assert!(linearizable(&overlapping));
        // Listed out of time order: the order of the slice does not matter.
        let mut shuffled = sequential.to_vec();
        shuffled.reverse();
        assert!(linearizable(&shuffled));
    }

    #[test]
    fn rejects_stale_reads_lost_writes_and_double_cas() {
        let t = Instant::now();
        // A read after a write returned sees nothing.
        let stale = [
            at(t, 0, 1, set("a"), Outcome::Written(10)),
            at(t, 2, 3, Op::Get, Outcome::Missing),
        ];
        assert!(!linearizable(&stale));
        // Reads that go back: "b", then "a", with no write in between.
        let back = [
            at(t, 0, 1, set("a"), Outcome::Written(10)),
            at(t, 2, 3, set("b"), Outcome::Written(11)),
            at(t, 4, 5, Op::Get, found("b", 11)),
            at(t, 6, 7, Op::Get, found("a", 10)),
        ];
        assert!(!linearizable(&back));
        // Two compare-and-sets from one version both win.
        let double = [
            at(t, 0, 1, set("a"), Outcome::Written(10)),
            at(t, 2, 5, Op::Cas(10, "b".into()), Outcome::Written(11)),
            at(t, 2, 5, Op::Cas(10, "c".into()), Outcome::Written(12)),
        ];
        assert!(!linearizable(&double));
        // A version that goes back.
        let older = [
            at(t, 0, 1, set("a"), Outcome::Written(10)),
            at(t, 2, 3, set("b"), Outcome::Written(9)),
        ];
        assert!(!linearizable(&older));
    }
}
