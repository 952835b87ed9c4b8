use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

const POLL: Duration = Duration::from_millis(50);

fn id(n: usize) -> TaskId {
    TaskId::new(format!("t-{n}")).expect("a task id")
}

fn ids(ns: &[usize]) -> Vec<TaskId> {
    ns.iter().copied().map(id).collect()
}

fn same(t: &TaskId) -> &TaskId {
    t
}

fn limit(claim: Option<Claim>) -> Option<usize> {
    claim.map(|c| c.limit)
}

#[test]
fn work_found_is_followed_at_once_and_nothing_found_waits_a_poll() {
    let t0 = Instant::now();
    let mut p = Pipeline::new(4, POLL, t0);
    assert_eq!(limit(p.start_claim(t0)), Some(4));
    assert_eq!(p.next_claim(), None, "one claim out at a time");
    assert_eq!(p.start_claim(t0), None);
    assert_eq!(p.claimed(ids(&[1, 2]), same, t0), ids(&[1, 2]));
    assert_eq!(limit(p.start_claim(t0)), Some(2), "only the free slots");
    assert_eq!(p.claimed(Vec::new(), same, t0), Vec::<TaskId>::new());
    assert_eq!(p.next_claim(), Some(t0 + POLL));
    assert_eq!(p.start_claim(t0 + POLL / 2), None);
    // A step that ends frees its slot and may leave its task due: look at once.
    let t1 = t0 + POLL / 2;
    p.drove(&id(1), t1);
    assert_eq!(limit(p.start_claim(t1)), Some(3));
}

#[test]
fn every_slot_busy_means_no_claim_until_a_step_ends() {
    let t0 = Instant::now();
    let mut p = Pipeline::new(2, POLL, t0);
    assert_eq!(limit(p.start_claim(t0)), Some(2));
    assert_eq!(p.claimed(ids(&[1, 2]), same, t0).len(), 2);
    assert_eq!(p.next_claim(), None);
    assert_eq!(p.start_claim(t0 + POLL * 10), None);
    p.drove(&id(2), t0 + POLL * 10);
    assert_eq!(limit(p.start_claim(t0 + POLL * 10)), Some(1));
}

#[test]
fn a_claim_leaves_out_the_tasks_under_way() {
    let t0 = Instant::now();
    let mut p = Pipeline::new(4, POLL, t0);
    p.start_claim(t0);
    p.claimed(ids(&[1, 2]), same, t0);
    let claim = p.start_claim(t0).expect("a claim");
    let mut except = claim.except;
    except.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    assert_eq!(except, ids(&[1, 2]));
    // Task 2's step ends while the claim is out: the claim's answer is kept, and
    // the freed slot is looked at again at once.
    p.drove(&id(2), t0);
    assert!(p.claimed(Vec::new(), same, t0).is_empty());
    assert_eq!(p.next_claim(), Some(t0));
    assert_eq!(p.start_claim(t0).expect("a claim").except, ids(&[1]));
}

#[test]
fn a_task_returned_while_under_way_is_not_driven_twice() {
    let t0 = Instant::now();
    let mut p = Pipeline::new(4, POLL, t0);
    p.start_claim(t0);
    p.claimed(ids(&[1]), same, t0);
    // A store that ignored the exception: the task is not driven a second time,
    // and the pipeline does not ask again at once (it would get it again and again).
    p.start_claim(t0);
    assert!(p.claimed(ids(&[1]), same, t0).is_empty());
    assert_eq!(p.next_claim(), Some(t0 + POLL));
}

#[test]
fn a_failed_claim_waits_a_poll() {
    let t0 = Instant::now();
    let mut p = Pipeline::new(4, POLL, t0);
    p.start_claim(t0);
    p.claimed(ids(&[1]), same, t0);
    p.start_claim(t0);
    p.drove(&id(1), t0);
    p.claim_failed(t0);
    assert_eq!(p.next_claim(), Some(t0 + POLL));
    p.start_claim(t0 + POLL);
    assert_eq!(p.claimed(ids(&[1]), same, t0 + POLL), ids(&[1]));
}

/// One event of the run loop, in any order the loop may see them.
#[derive(Debug, Clone)]
enum Event {
    /// A claim goes out if one may; the store reads the tasks' records now (the
    /// earliest it may, so that any step ending meanwhile leaves them stale).
    StartClaim,
    /// The claim out (if any) answers with the due tasks among these, as read.
    Answer(Vec<usize>),
    /// The step under way of the task at this index (of those under way) ends.
    EndStep(usize),
    /// Time passes.
    Wait(u32),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        Just(Event::StartClaim),
        proptest::collection::vec(0..6_usize, 0..6).prop_map(Event::Answer),
        (0..6_usize).prop_map(Event::EndStep),
        (0..100_u32).prop_map(Event::Wait),
    ]
}

proptest! {
    /// Whatever the order of claims, answers and ends of steps, a task is never
    /// driven while a step of it is under way here, never from a record read before
    /// its last step ended, and never more than the limit at once; a claim never goes
    /// out before it may.
    #[test]
    fn no_order_of_events_drives_a_task_twice_or_from_a_stale_record(
        limit in 1..5_usize,
        events in proptest::collection::vec(event(), 0..60),
    ) {
        let mut now = Instant::now();
        let mut p = Pipeline::new(limit, POLL, now);
        // Each task's version: how many of its steps have ended.
        let mut version: HashMap<usize, u32> = HashMap::new();
        let mut under_way: Vec<usize> = Vec::new();
        // The claim out: its limit, its exceptions and the versions it read.
        let mut out: Option<(usize, Vec<TaskId>, HashMap<usize, u32>)> = None;
        for event in events {
            match event {
                Event::StartClaim => {
                    let may = p.next_claim().is_some_and(|at| at <= now);
                    let started = p.start_claim(now);
                    prop_assert_eq!(started.is_some(), may);
                    if let Some(claim) = started {
                        prop_assert!(out.is_none());
                        prop_assert_eq!(claim.limit, limit - under_way.len());
                        let mut except = claim.except;
                        except.sort_by(|a, b| a.as_str().cmp(b.as_str()));
                        let mut expected = under_way.iter().map(|n| id(*n)).collect::<Vec<_>>();
                        expected.sort_by(|a, b| a.as_str().cmp(b.as_str()));
                        prop_assert_eq!(&except, &expected);
                        out = Some((claim.limit, except, version.clone()));
                    }
                }
                Event::Answer(tasks) => {
                    let Some((room, except, seen)) = out.take() else { continue };
                    // The store leases free tasks and the caller's own, except those
                    // named, as it read them when the claim started; at most `room`.
                    let mut answer: Vec<(TaskId, usize)> = Vec::new();
                    for n in tasks {
                        if answer.len() < room
                            && !except.contains(&id(n))
                            && !answer.iter().any(|(_, m)| *m == n)
                        {
                            answer.push((id(n), n));
                        }
                    }
                    for (_, n) in p.claimed(answer, |(t, _)| t, now) {
                        prop_assert!(!under_way.contains(&n), "task {} driven twice", n);
                        prop_assert_eq!(
                            seen.get(&n).copied().unwrap_or(0),
                            version.get(&n).copied().unwrap_or(0),
                            "task {} driven from a stale record", n
                        );
                        under_way.push(n);
                    }
                    prop_assert!(under_way.len() <= limit);
                }
                Event::EndStep(i) => {
                    if under_way.is_empty() {
                        continue;
                    }
                    let n = under_way.remove(i % under_way.len());
                    *version.entry(n).or_default() += 1;
                    p.drove(&id(n), now);
                }
                Event::Wait(ms) => now += Duration::from_millis(u64::from(ms)),
            }
        }
    }
}
