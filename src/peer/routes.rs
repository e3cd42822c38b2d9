//! Which neighbours a server sends a report to at once, and which it makes
//! wait (see `flood`).
//!
//! Flooding over a herd with cycles sends each report over every link, in
//! one direction or both, although a spanning tree rooted at the report's
//! origin (the server named in its AT line) would reach every server with
//! one message per server. Nothing may be left out on that ground alone: a
//! tree edge can fail, and only a neighbour that sent us a report is known
//! to hold it. So every link still sends every report its rules do not
//! leave out, but not all at once:
//!
//! - to a neighbour that is our child in the origin's tree, at once;
//! - over a link outside the tree, after a short wait from its end with
//!   the lower name, after a long one from the other end: the first copy
//!   reaches the waiting end, which holds the report already (from the
//!   tree), and marks that the neighbour sent it, so the held copy is then
//!   left out (the store's "sent it to us" rule); one message on that link
//!   instead of two. The short wait keeps that copy, which only guards
//!   against a failed tree edge, out of the way of the tree's own messages:
//!   on a small machine every message is CPU time that the next hop of a
//!   fresh report would otherwise have;
//! - back towards our own parent in the tree, after the long wait (usually
//!   left out anyway: the parent is where it came from).
//!
//! A failed tree edge costs the servers below it a wait, not the report.
//! The trees are breadth-first from each origin over the configured links,
//! a server's parent being its neighbour nearest the origin (the lowest
//! name among equals), so every server of a herd computes the same trees
//! from the same config. Plain synchronous code, computed once at start.

use std::collections::{HashMap, VecDeque};

/// How long a report waits before it is sent over a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Down the origin's tree (and wherever there is no tree): at once.
    None,
    /// Over a link outside the tree, from its end with the lower name.
    Short,
    /// Over a link outside the tree from its other end, or back towards
    /// the tree parent: long enough for the copy sent the other way to
    /// arrive first.
    Long,
}

/// For each origin, how long its reports wait for each neighbour.
#[derive(Debug, Default)]
pub struct Routes {
    /// Looked up for every report on every link: foldhash, not SipHash
    /// (server names are not chosen by clients).
    waits: foldhash::HashMap<Vec<u8>, Vec<Wait>>,
}

impl Routes {
    /// The routes of server `me`, whose neighbours are `neighbours` (in the
    /// order links number them), in a herd of `herd`: each server's name
    /// and the names of its neighbours.
    pub fn new(me: &str, neighbours: &[&str], herd: &[(&str, Vec<&str>)]) -> Self {
        let index: HashMap<&str, usize> = herd
            .iter()
            .enumerate()
            .map(|(i, (name, _))| (*name, i))
            .collect();
        // Links are both ways; a link named by either end counts.
        let mut adjacent = vec![Vec::new(); herd.len()];
        for (i, (_, theirs)) in herd.iter().enumerate() {
            for j in theirs.iter().filter_map(|name| index.get(name)) {
                if i != *j {
                    adjacent[i].push(*j);
                    adjacent[*j].push(i);
                }
            }
        }
        for list in &mut adjacent {
            list.sort_by_key(|&j| herd[j].0);
            list.dedup();
        }
        let Some(&me_at) = index.get(me) else {
            return Self::default();
        };
        let waits = herd
            .iter()
            .enumerate()
            .map(|(origin, (origin_name, _))| {
                let parent = tree(&adjacent, origin);
                let row = neighbours
                    .iter()
                    .map(|name| match index.get(name) {
                        Some(&them) => wait((me, me_at), (name, them), origin, &parent),
                        None => Wait::None,
                    })
                    .collect();
                (origin_name.as_bytes().to_vec(), row)
            })
            .collect();
        Self { waits }
    }

    /// How long a report from `origin` waits for neighbour `neighbour`.
    /// Origins outside the herd (a server this config does not know) are
    /// flooded at once everywhere.
    pub fn wait(&self, origin: &[u8], neighbour: usize) -> Wait {
        self.waits
            .get(origin)
            .and_then(|row| row.get(neighbour).copied())
            .unwrap_or(Wait::None)
    }
}

/// Each server's parent in the breadth-first tree from `origin` (`None`
/// for the origin and for servers it cannot reach). `adjacent` lists are
/// sorted by name, so the first neighbour one step nearer is the parent.
fn tree(adjacent: &[Vec<usize>], origin: usize) -> Vec<Option<usize>> {
    let mut distance = vec![None; adjacent.len()];
    let mut parent = vec![None; adjacent.len()];
    distance[origin] = Some(0usize);
    let mut queue = VecDeque::from([origin]);
    while let Some(at) = queue.pop_front() {
        let next = distance[at].expect("queued servers have a distance") + 1;
        for &them in &adjacent[at] {
            if distance[them].is_none() {
                distance[them] = Some(next);
                queue.push_back(them);
            }
        }
    }
    for (at, list) in adjacent.iter().enumerate() {
        if let Some(d) = distance[at].filter(|&d| d > 0) {
            parent[at] = list.iter().copied().find(|&j| distance[j] == Some(d - 1));
        }
    }
    parent
}

/// How long `me` holds a report for neighbour `them`, given the parents of
/// the report's origin's tree.
fn wait(
    (me, me_at): (&str, usize),
    (them_name, them): (&str, usize),
    origin: usize,
    parent: &[Option<usize>],
) -> Wait {
    let reached = |at: usize| at == origin || parent[at].is_some();
    if !reached(me_at) || !reached(them) {
        // Not in the origin's part of the herd: flood.
        return Wait::None;
    }
    if parent[them] == Some(me_at) {
        Wait::None
    } else if parent[me_at] == Some(them) || me > them_name {
        Wait::Long
    } else {
        Wait::Short
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The herd of SPEC §1.
    fn spec_herd() -> Vec<(&'static str, Vec<&'static str>)> {
        vec![
            ("Hill", vec!["Jaquez", "Smith"]),
            ("Jaquez", vec!["Hill", "Singleton"]),
            ("Smith", vec!["Hill", "Singleton", "Campbell"]),
            ("Campbell", vec!["Smith", "Singleton"]),
            ("Singleton", vec!["Jaquez", "Smith", "Campbell"]),
        ]
    }

    fn routes_of(me: &str) -> (Routes, Vec<&'static str>) {
        let herd = spec_herd();
        let neighbours = herd.iter().find(|(name, _)| *name == me).unwrap().1.clone();
        (Routes::new(me, &neighbours, &herd), neighbours)
    }

    /// The neighbours `me` sends `origin`'s reports to after `wait`.
    fn sent_from(me: &str, origin: &str, wait: Wait) -> Vec<&'static str> {
        let (routes, neighbours) = routes_of(me);
        neighbours
            .iter()
            .enumerate()
            .filter(|&(i, _)| routes.wait(origin.as_bytes(), i) == wait)
            .map(|(_, name)| *name)
            .collect()
    }

    fn at_once_from(me: &str, origin: &str) -> Vec<&'static str> {
        sent_from(me, origin, Wait::None)
    }

    #[test]
    fn reports_from_hill_go_down_its_tree_at_once() {
        // Hill's tree: Hill -> Jaquez, Smith; Jaquez -> Singleton (Jaquez
        // before Smith among equals); Smith -> Campbell.
        assert_eq!(at_once_from("Hill", "Hill"), ["Jaquez", "Smith"]);
        assert_eq!(at_once_from("Jaquez", "Hill"), ["Singleton"]);
        // Smith -> Singleton is outside the tree, and Smith names the
        // higher end: it waits long, for Singleton's copy; back to Hill too.
        assert_eq!(at_once_from("Smith", "Hill"), ["Campbell"]);
        assert_eq!(
            sent_from("Smith", "Hill", Wait::Long),
            ["Hill", "Singleton"]
        );
        // Singleton, the lower end of its links outside the tree, sends
        // over them after the short wait; Campbell < Singleton, so Campbell
        // sends first over theirs. Neither sends anything at once.
        assert_eq!(sent_from("Singleton", "Hill", Wait::Short), ["Smith"]);
        assert_eq!(sent_from("Campbell", "Hill", Wait::Short), ["Singleton"]);
        assert!(at_once_from("Singleton", "Hill").is_empty());
        assert!(at_once_from("Campbell", "Hill").is_empty());
    }

    #[test]
    fn every_server_is_reached_at_once_from_every_origin() {
        let herd = spec_herd();
        for (origin, _) in &herd {
            // Follow only the sends made at once, from the origin.
            let mut reached = vec![*origin];
            let mut queue = VecDeque::from([*origin]);
            while let Some(at) = queue.pop_front() {
                for them in at_once_from(at, origin) {
                    if !reached.contains(&them) {
                        reached.push(them);
                        queue.push_back(them);
                    }
                }
            }
            assert_eq!(reached.len(), herd.len(), "from {origin}: {reached:?}");
        }
    }

    #[test]
    fn each_link_outside_a_tree_is_sent_over_first_one_way() {
        let herd = spec_herd();
        for (origin, _) in &herd {
            for (a, theirs) in &herd {
                for b in theirs {
                    let a_to_b = sent_from(a, origin, Wait::Long).contains(b);
                    let b_to_a = sent_from(b, origin, Wait::Long).contains(a);
                    // Every link has an end that does not wait long, and
                    // at most one end waits short.
                    assert!(!(a_to_b && b_to_a), "{origin}: {a} <-> {b} both wait long");
                    let a_short = sent_from(a, origin, Wait::Short).contains(b);
                    let b_short = sent_from(b, origin, Wait::Short).contains(a);
                    assert!(
                        !(a_short && b_short),
                        "{origin}: {a} <-> {b} both wait short"
                    );
                    let a_now = at_once_from(a, origin).contains(b);
                    let b_now = at_once_from(b, origin).contains(a);
                    assert!(!(a_now && b_now), "{origin}: {a} <-> {b} both at once");
                    // A link outside the tree: one end short, the other long.
                    if !(a_now || b_now) {
                        assert!(a_short != b_short, "{origin}: {a} <-> {b}");
                    }
                }
            }
        }
    }

    #[test]
    fn strangers_and_herds_apart_are_flooded() {
        let herd = vec![("A", vec!["B"]), ("B", vec!["A"]), ("C", vec![])];
        let routes = Routes::new("A", &["B"], &herd);
        assert_eq!(routes.wait(b"Nobody", 0), Wait::None);
        // C reaches nobody: its reports (had anyone one) are flooded.
        assert_eq!(routes.wait(b"C", 0), Wait::None);
        assert_eq!(routes.wait(b"A", 0), Wait::None);
        assert_eq!(routes.wait(b"B", 0), Wait::Long, "back to the origin waits");
        // A neighbour past the list, or a server not in the herd: at once.
        assert_eq!(routes.wait(b"A", 5), Wait::None);
        assert_eq!(Routes::new("Z", &["B"], &herd).wait(b"A", 0), Wait::None);
    }
}
