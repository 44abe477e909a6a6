//! A linearizability checker for one versioned register (a cache key): a
//! Wing–Gong search with memoization, as Porcupine does it. A history is
//! linearizable if its operations can be put in one order that respects
//! real time (an operation that returned before another was invoked comes
//! first) and in which each result is what the register gives at that
//! point.
//!
//! A write whose answer never came (a timeout, a dropped connection, a
//! 503 after the command may have reached Redis) is indeterminate: it may
//! have taken effect at any time after it was called, or never. Its
//! `outcome` is [`Outcome::Unknown`]; the search may place it anywhere
//! after its call or leave it out, as Porcupine does with operations that
//! never return. Values must be unique per write, so that a read of an
//! indeterminate write's value says which version it got.

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
    /// No answer: a write that may or may not have taken effect.
    Unknown,
}

/// One operation as a client saw it: from invocation to answer.
#[derive(Debug, Clone)]
pub struct Event {
    pub op: Op,
    pub outcome: Outcome,
    pub called: Instant,
    pub returned: Instant,
}

/// The register: its value and version (unknown after a write whose
/// answer was lost and whose value no read saw), none before the first
/// write.
type State = Option<(String, Option<u64>)>;

/// The state after `op` answered `outcome` in `state`, if it could have.
fn step(state: &State, op: &Op, outcome: &Outcome) -> Option<State> {
    // The current version; `None` if unknown (then no later version can
    // be checked against it, and no observed version equals it).
    let version = match state {
        None => Some(0),
        Some((_, version)) => *version,
    };
    let newer = |new: u64| version.is_none_or(|v| new > v);
    match (op, outcome) {
        (Op::Set(value), Outcome::Written(new)) if newer(*new) => {
            Some(Some((value.clone(), Some(*new))))
        }
        (Op::Set(value), Outcome::Unknown) => Some(Some((value.clone(), None))),
        (Op::Get, Outcome::Found(value, v))
            if state.as_ref() == Some(&(value.clone(), Some(*v))) =>
        {
            Some(state.clone())
        }
        (Op::Get, Outcome::Missing) if state.is_none() => Some(None),
        (Op::Cas(expected, value), Outcome::Written(new))
            if state.is_some() && version == Some(*expected) && newer(*new) =>
        {
            Some(Some((value.clone(), Some(*new))))
        }
        (Op::Cas(expected, value), Outcome::Unknown)
            if state.is_some() && version == Some(*expected) =>
        {
            Some(Some((value.clone(), None)))
        }
        (Op::Cas(expected, _), Outcome::Refused)
            if state.is_none() || version != Some(*expected) =>
        {
            Some(state.clone())
        }
        _ => None,
    }
}

/// One operation as the search sees it.
struct Candidate<'a> {
    op: &'a Op,
    outcome: Outcome,
    called: Instant,
    /// When it returned; `None`: never (indeterminate).
    returned: Option<Instant>,
}

/// Search steps after which [`check`] gives up: a history it cannot
/// decide in this many is reported, not waited on.
const MAX_STEPS: usize = 5_000_000;

/// Whether the history is linearizable, from an empty register.
pub fn linearizable(history: &[Event]) -> bool {
    check(history).is_ok()
}

/// [`linearizable`], saying why not: the longest prefix the search could
/// place, the register's state there, and the operations that could have
/// come next but did not fit (times in ms from the first call).
pub fn check(history: &[Event]) -> Result<(), String> {
    let mut candidates: Vec<Candidate> = history
        .iter()
        .map(|e| {
            let value = match &e.op {
                Op::Set(value) | Op::Cas(_, value) => Some(value),
                Op::Get => None,
            };
            // An indeterminate write whose value a read saw happened, with
            // the version read, before the first such read returned.
            let read = value.and_then(|value| {
                history
                    .iter()
                    .filter_map(|r| match &r.outcome {
                        Outcome::Found(v, version) if v == value => Some((r.returned, *version)),
                        _ => None,
                    })
                    .min()
            });
            let (outcome, returned) = match (&e.outcome, read) {
                (Outcome::Unknown, Some((by, version))) => (Outcome::Written(version), Some(by)),
                (Outcome::Unknown, None) => (Outcome::Unknown, None),
                (outcome, _) => (outcome.clone(), Some(e.returned)),
            };
            Candidate {
                op: &e.op,
                outcome,
                called: e.called,
                returned,
            }
        })
        .collect();
    // Tried in this order at each step: operations that returned first,
    // by invocation; then the indeterminate ones, which a search needs
    // only to explain a refused compare-and-set.
    candidates.sort_by_key(|c| (c.returned.is_none(), c.called));
    let n = candidates.len();
    let words = n.div_ceil(64);
    let mut seen: HashSet<(Vec<u64>, State)> = HashSet::new();
    // The deepest node reached: (operations placed, state, those placed).
    let mut deepest: (usize, State, Vec<u64>) = (0, None, vec![0; words]);
    // Depth-first: (operations placed, state, next candidate to try).
    let mut stack: Vec<(Vec<u64>, State, usize)> = vec![(vec![0; words], None, 0)];
    let mut steps = 0;
    while let Some((done, state, from)) = stack.pop() {
        steps += 1;
        if steps > MAX_STEPS {
            break;
        }
        let placed = |i: usize| done[i / 64] & (1 << (i % 64)) != 0;
        // The earliest answer among those not placed: an operation
        // invoked after it cannot come next. Done when every operation
        // that answered is placed (the indeterminate ones may never
        // have happened).
        let Some(horizon) = (0..n)
            .filter(|&i| !placed(i))
            .filter_map(|i| candidates[i].returned)
            .min()
        else {
            return Ok(());
        };
        let depth = done.iter().map(|w| w.count_ones() as usize).sum();
        if depth > deepest.0 {
            deepest = (depth, state.clone(), done.clone());
        }
        for i in from..n {
            let c = &candidates[i];
            if placed(i) || c.called > horizon {
                continue;
            }
            let Some(next) = step(&state, c.op, &c.outcome) else {
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
    let (depth, state, done) = deepest;
    let placed = |i: usize| done[i / 64] & (1 << (i % 64)) != 0;
    let start = candidates
        .iter()
        .map(|c| c.called)
        .min()
        .expect("a history");
    let ms = |t: Instant| t.duration_since(start).as_secs_f64() * 1e3;
    let horizon = (0..n)
        .filter(|&i| !placed(i))
        .filter_map(|i| candidates[i].returned)
        .min();
    let next: Vec<String> = (0..n)
        .filter(|&i| !placed(i) && horizon.is_none_or(|h| candidates[i].called <= h))
        .map(|i| {
            let c = &candidates[i];
            let returned = c
                .returned
                .map_or("never".into(), |t| format!("{:.1}", ms(t)));
            format!(
                "  {:?} -> {:?} [{:.1}, {returned}]",
                c.op,
                c.outcome,
                ms(c.called)
            )
        })
        .collect();
    let verdict = if steps > MAX_STEPS {
        format!("undecided after {MAX_STEPS} steps")
    } else {
        "not linearizable".into()
    };
    Err(format!(
        "{verdict}: at most {depth} of {n} operations placed, the register then {state:?}; none of these fits next:\n{}",
        next.join("\n")
    ))
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

    #[test]
    fn indeterminate_writes_may_have_happened_or_not() {
        let t = Instant::now();
        // Lost, and never seen: as if it had not happened.
        let unseen = [
            at(t, 0, 1, set("a"), Outcome::Written(10)),
            at(t, 2, 3, set("lost"), Outcome::Unknown),
            at(t, 4, 5, Op::Get, found("a", 10)),
        ];
        assert!(linearizable(&unseen));
        // Lost, then seen long after it was called: it happened, late.
        let late = [
            at(t, 0, 1, set("a"), Outcome::Written(10)),
            at(t, 2, 3, set("late"), Outcome::Unknown),
            at(t, 4, 5, Op::Get, found("a", 10)),
            at(t, 6, 7, Op::Get, found("late", 12)),
        ];
        assert!(linearizable(&late));
        // Lost and unseen, but it explains a refused compare-and-set: the
        // version moved on.
        let moved = [
            at(t, 0, 1, set("a"), Outcome::Written(10)),
            at(t, 2, 3, set("lost"), Outcome::Unknown),
            at(t, 4, 5, Op::Cas(10, "b".into()), Outcome::Refused),
        ];
        assert!(linearizable(&moved));
        // A lost compare-and-set from a version that had moved on cannot
        // be what a read saw.
        let impossible = [
            at(t, 0, 1, set("a"), Outcome::Written(10)),
            at(t, 2, 3, set("b"), Outcome::Written(11)),
            at(t, 4, 5, Op::Cas(10, "c".into()), Outcome::Unknown),
            at(t, 6, 7, Op::Get, found("c", 12)),
        ];
        assert!(!linearizable(&impossible));
        // Nor can a lost write be seen before it was called.
        let early = [
            at(t, 0, 1, Op::Get, found("x", 10)),
            at(t, 2, 3, set("x"), Outcome::Unknown),
        ];
        assert!(!linearizable(&early));
        // Once seen, it stays until something else is written.
        let undone = [
            at(t, 0, 1, set("x"), Outcome::Unknown),
            at(t, 2, 3, Op::Get, found("x", 10)),
            at(t, 4, 5, Op::Get, Outcome::Missing),
        ];
        assert!(!linearizable(&undone));
    }
}
