//! Which neighbours get a report's payload at once, and which only if they
//! do not say, in time, that they hold it (see `link` and
//! `docs/flooding.md`).
//!
//! Every report travels down its origin's shortest-path tree over the links
//! that are up: a server pushes it at once to the neighbours that are its
//! children in that tree. To its other neighbours (lazy links) it holds the
//! payload back for a while: if the neighbour's watermark has not reached
//! the report by then, the tree failed it somewhere and the payload goes
//! after all. So a healthy
//! herd carries each report's payload once per server, and a silent
//! failure costs the servers below it one hold, not the report.
//!
//! The trees are breadth-first from each origin over the *live* graph: a
//! link counts when both its ends say it is up (see `topology`), so a dead
//! server, which can no longer say anything, drops out as soon as its
//! neighbours notice. A server's parent is its neighbour nearest the origin
//! (the lowest name among equals), so servers that know the same graph
//! compute the same trees. Plain synchronous code.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// What a link does with a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Down the origin's tree, wherever the tree is not known, and
    /// wherever a report came by another way than the tree (the tree is
    /// broken above us): the payload at once.
    None,
    /// A lazy link: the payload only if the neighbour has not said it
    /// holds the report (by its watermark) when the hold is over.
    Hold,
}

/// The live graph: each server's claims of which of its links are up.
pub type Claims = BTreeMap<String, BTreeSet<String>>;

/// For each origin, which of this server's neighbours are its children.
#[derive(Debug, Default)]
pub struct Routes {
    /// Looked up for every report on every link: foldhash, not SipHash
    /// (server names are not chosen by clients). A set bit `i` means
    /// neighbour `i` gets the payload at once; with the neighbour that is
    /// this server's parent in the origin's tree, if any.
    eager: foldhash::HashMap<Vec<u8>, (u64, Option<usize>)>,
    /// How many neighbours this server has; links past them are flooded.
    neighbours: usize,
}

impl Routes {
    /// The routes of server `me`, whose neighbours are `neighbours` (in the
    /// order links number them), over the links of `claims` that both ends
    /// claim.
    pub fn live(me: &str, neighbours: &[String], claims: &Claims) -> Self {
        let names: Vec<&str> = claims.keys().map(String::as_str).collect();
        let index: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let Some(&me_at) = index.get(me) else {
            return Self::default();
        };
        // Adjacency over links both ends claim; names are sorted, so each
        // list is too.
        let adjacent: Vec<Vec<usize>> = names
            .iter()
            .map(|a| {
                claims[*a]
                    .iter()
                    .filter_map(|b| index.get(b.as_str()).copied())
                    .filter(|&j| claims[names[j]].contains(*a) && names[j] != *a)
                    .collect()
            })
            .collect();
        let eager = names
            .iter()
            .enumerate()
            .map(|(origin, origin_name)| {
                let parent = tree(&adjacent, origin);
                let reached = |at: usize| at == origin || parent[at].is_some();
                let mut bits = 0u64;
                let up = parent[me_at].map(|p| names[p]);
                let up = neighbours.iter().position(|n| Some(n.as_str()) == up);
                for (i, name) in neighbours.iter().enumerate().take(64) {
                    let them = index.get(name.as_str()).copied();
                    let eager = match them {
                        // The tree does not reach one of us (a graph not
                        // fully known yet): flood, promptly.
                        Some(them) if reached(me_at) && reached(them) => {
                            parent[them] == Some(me_at)
                        }
                        _ => true,
                    };
                    if eager {
                        bits |= 1 << i;
                    }
                }
                (origin_name.as_bytes().to_vec(), (bits, up))
            })
            .collect();
        Self {
            eager,
            neighbours: neighbours.len().min(64),
        }
    }

    /// The routes of `me` in a herd whose configured links (each server's
    /// name and its neighbours' names) are all up.
    pub fn configured(me: &str, neighbours: &[&str], herd: &[(&str, Vec<&str>)]) -> Self {
        let mut claims = Claims::new();
        for (a, theirs) in herd {
            claims.entry((*a).to_owned()).or_default();
            for b in theirs {
                claims
                    .entry((*a).to_owned())
                    .or_default()
                    .insert((*b).to_owned());
                claims
                    .entry((*b).to_owned())
                    .or_default()
                    .insert((*a).to_owned());
            }
        }
        let neighbours: Vec<String> = neighbours.iter().map(|n| (*n).to_owned()).collect();
        Self::live(me, &neighbours, &claims)
    }

    /// What a report from `origin` that came from neighbour `came_from`
    /// (`None`: from a client) does on the link to neighbour `neighbour`.
    /// Origins the graph does not know are flooded.
    pub fn wait(&self, origin: &[u8], came_from: Option<usize>, neighbour: usize) -> Wait {
        match self.eager.get(origin) {
            Some(&(bits, parent))
                if neighbour < self.neighbours
                    && bits & (1 << neighbour) == 0
                    && came_from == parent =>
            {
                Wait::Hold
            }
            _ => Wait::None,
        }
    }

    /// Whether the link with `neighbour` is lazy both ways for reports
    /// made at `origin`: the neighbour is neither our parent nor our child
    /// in the origin's tree, so that (computing the same tree) it holds
    /// such reports back for us until we say we hold them.
    pub fn lazy(&self, origin: &[u8], neighbour: usize) -> bool {
        match self.eager.get(origin) {
            Some(&(bits, parent)) => {
                neighbour < self.neighbours
                    && bits & (1 << neighbour) == 0
                    && parent != Some(neighbour)
            }
            None => false,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The default herd.
    fn default_herd() -> Vec<(&'static str, Vec<&'static str>)> {
        vec![
            ("Hill", vec!["Jaquez", "Smith"]),
            ("Jaquez", vec!["Hill", "Singleton"]),
            ("Smith", vec!["Hill", "Singleton", "Campbell"]),
            ("Campbell", vec!["Smith", "Singleton"]),
            ("Singleton", vec!["Jaquez", "Smith", "Campbell"]),
        ]
    }

    fn neighbours_of(me: &str) -> Vec<&'static str> {
        default_herd()
            .into_iter()
            .find(|(name, _)| *name == me)
            .unwrap()
            .1
    }

    /// The neighbours `me` pushes `origin`'s reports to at once, with every
    /// configured link up but those in `down`.
    fn at_once(me: &str, origin: &str, down: &[(&str, &str)]) -> Vec<&'static str> {
        let mut claims = Claims::new();
        for (a, theirs) in default_herd() {
            for b in theirs {
                if !down.contains(&(a, b)) && !down.contains(&(b, a)) {
                    claims.entry(a.to_owned()).or_default().insert(b.to_owned());
                }
            }
        }
        let neighbours = neighbours_of(me);
        let names: Vec<String> = neighbours.iter().map(|n| n.to_string()).collect();
        let routes = Routes::live(me, &names, &claims);
        neighbours
            .iter()
            .enumerate()
            .filter(|&(i, _)| {
                routes.wait(origin.as_bytes(), parent_of(&routes, origin), i) == Wait::None
            })
            .map(|(_, name)| *name)
            .collect()
    }

    /// Where a report from `origin` comes from to the server of `routes`
    /// in a healthy herd: its tree parent.
    fn parent_of(routes: &Routes, origin: &str) -> Option<usize> {
        routes
            .eager
            .get(origin.as_bytes())
            .and_then(|&(_, parent)| parent)
    }

    #[test]
    fn reports_from_hill_go_down_its_tree_at_once() {
        // Hill's tree: Hill -> Jaquez, Smith; Jaquez -> Singleton (Jaquez
        // before Smith among equals); Smith -> Campbell.
        assert_eq!(at_once("Hill", "Hill", &[]), ["Jaquez", "Smith"]);
        assert_eq!(at_once("Jaquez", "Hill", &[]), ["Singleton"]);
        assert_eq!(at_once("Smith", "Hill", &[]), ["Campbell"]);
        assert!(at_once("Singleton", "Hill", &[]).is_empty());
        assert!(at_once("Campbell", "Hill", &[]).is_empty());
    }

    #[test]
    fn a_link_down_moves_the_tree_onto_live_links() {
        // Smith's links are down (Smith died): Campbell hangs below
        // Singleton now.
        let down = [
            ("Smith", "Hill"),
            ("Smith", "Singleton"),
            ("Smith", "Campbell"),
        ];
        // (Smith itself is out of every tree, so flooded; no link to it is
        // up to carry anything.)
        assert_eq!(at_once("Hill", "Hill", &down), ["Jaquez", "Smith"]);
        assert_eq!(at_once("Jaquez", "Hill", &down), ["Singleton"]);
        assert_eq!(at_once("Singleton", "Hill", &down), ["Smith", "Campbell"]);
        // A link one end no longer claims is down for everyone.
        let one_sided = [("Hill", "Smith")];
        let mut claims = Claims::new();
        for (a, theirs) in default_herd() {
            for b in theirs {
                if !one_sided.contains(&(a, b)) {
                    claims.entry(a.to_owned()).or_default().insert(b.to_owned());
                }
            }
        }
        let routes = Routes::live("Hill", &["Jaquez".into(), "Smith".into()], &claims);
        assert_eq!(routes.wait(b"Hill", None, 1), Wait::Hold);
    }

    #[test]
    fn every_server_is_reached_once_from_every_origin() {
        let herd = default_herd();
        for (origin, _) in &herd {
            let mut reached = vec![*origin];
            let mut queue = VecDeque::from([*origin]);
            let mut pushes = 0;
            while let Some(at) = queue.pop_front() {
                for them in at_once(at, origin, &[]) {
                    pushes += 1;
                    assert!(!reached.contains(&them), "{origin}: {them} twice");
                    reached.push(them);
                    queue.push_back(them);
                }
            }
            assert_eq!(reached.len(), herd.len(), "from {origin}: {reached:?}");
            assert_eq!(pushes, herd.len() - 1);
        }
    }

    /// A report that came by a way other than the tree (a lazy link's
    /// payload, after a silent failure above) goes on at once everywhere.
    #[test]
    fn a_report_off_the_tree_goes_on_at_once() {
        let neighbours: Vec<String> = ["Jaquez", "Smith", "Campbell"].map(String::from).to_vec();
        let herd = default_herd();
        let singleton: Vec<&str> = neighbours.iter().map(String::as_str).collect();
        let routes = Routes::configured("Singleton", &singleton, &herd);
        // Hill's tree reaches Singleton through Jaquez (index 0).
        assert_eq!(routes.wait(b"Hill", Some(0), 2), Wait::Hold);
        assert_eq!(
            routes.wait(b"Hill", Some(1), 2),
            Wait::None,
            "came from Smith"
        );
        assert_eq!(routes.wait(b"Hill", None, 2), Wait::None, "replayed");
        // Lazy both ways with Campbell (Smith's child) alone: Jaquez is
        // the parent, Smith a neighbour at the same depth, also lazy.
        let lazy: Vec<bool> = (0..3).map(|n| routes.lazy(b"Hill", n)).collect();
        assert_eq!(lazy, [false, true, true]);
        assert!(!routes.lazy(b"Nobody", 1), "an unknown origin is flooded");
        // Smith's children for Hill are Campbell alone; Hill is its parent.
        let smith = Routes::configured("Smith", &["Hill", "Singleton", "Campbell"], &herd);
        let lazy: Vec<bool> = (0..3).map(|n| smith.lazy(b"Hill", n)).collect();
        assert_eq!(lazy, [false, true, false]);
    }

    #[test]
    fn strangers_and_unknown_graphs_are_flooded() {
        let herd = vec![("A", vec!["B"]), ("B", vec!["A"]), ("C", vec![])];
        let routes = Routes::configured("A", &["B"], &herd);
        assert_eq!(routes.wait(b"Nobody", None, 0), Wait::None);
        // C reaches nobody: its reports (had anyone one) are flooded.
        assert_eq!(routes.wait(b"C", None, 0), Wait::None);
        assert_eq!(routes.wait(b"A", None, 0), Wait::None);
        assert_eq!(
            routes.wait(b"B", Some(0), 0),
            Wait::Hold,
            "back to the origin: lazy"
        );
        // A neighbour past the list, or a server not in the graph: at once.
        assert_eq!(routes.wait(b"A", None, 5), Wait::None);
        assert_eq!(
            Routes::configured("Z", &["B"], &herd).wait(b"A", None, 0),
            Wait::None
        );
        // Nothing known yet (no link claimed): everything is flooded.
        let empty = Routes::live("A", &["B".into()], &Claims::new());
        assert_eq!(empty.wait(b"A", None, 0), Wait::None);
    }
}
