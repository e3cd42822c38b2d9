//! Which links of the herd are up, as far as this server knows: each
//! server's own claim of its live links, flooded to the herd as link-state
//! lines (`L <server> <version> <neighbour>...`), from which `routes` builds
//! the trees. Pure: no IO, no clock (versions are given), no tasks.
//!
//! A server announces its claim whenever one of its links comes up or goes
//! down, with a version above any it announced before; every server keeps
//! the newest claim of each server and passes a newer one on to its other
//! neighbours, so a change reaches the whole herd in one flood. A link that
//! comes up is sent the whole table, so a new or restarted server learns
//! the graph at once. A link counts only when both ends claim it, so the
//! stale claim of a dead server, which can no longer retract it, does not
//! keep its links alive.

use std::collections::BTreeMap;

use super::routes::{Claims, Routes};
use super::wire::split_word;
use crate::protocol::time::parse_digits_u64;

/// What [`Topology::apply`] made of a link-state line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learned {
    /// Newer than what was known: the routes change; pass it on.
    Newer,
    /// Known already, or older: nothing to do.
    Known,
    /// A claim about this server newer than its own: this server must
    /// announce itself again (see [`Topology::reannounce`]).
    AboutMe,
    /// Not a link-state line.
    Malformed,
}

/// One server's knowledge of the live graph.
#[derive(Debug)]
pub struct Topology {
    me: String,
    neighbours: Vec<String>,
    up: Vec<bool>,
    claims: Claims,
    versions: BTreeMap<String, u64>,
}

impl Topology {
    /// Server `me` with `neighbours` (in the order links number them), no
    /// link up yet.
    pub fn new(me: &str, neighbours: Vec<String>) -> Self {
        let mut claims = Claims::new();
        claims.insert(me.to_owned(), Default::default());
        Self {
            me: me.to_owned(),
            up: vec![false; neighbours.len()],
            neighbours,
            claims,
            versions: BTreeMap::from([(me.to_owned(), 0)]),
        }
    }

    /// Notes that the link to neighbour `index` came up or went down. If
    /// that changes this server's claim, returns its new link-state line,
    /// versioned above `clock` and any earlier version, for every neighbour.
    pub fn set_link(&mut self, index: usize, up: bool, clock: u64) -> Option<Vec<u8>> {
        if self.up[index] == up {
            return None;
        }
        self.up[index] = up;
        Some(self.reannounce(clock))
    }

    /// Whether the link to neighbour `index` is up, as last set.
    pub fn is_up(&self, index: usize) -> bool {
        self.up.get(index).copied().unwrap_or(false)
    }

    /// This server's claim as a new link-state line, versioned above
    /// `clock` and every version it is known by.
    pub fn reannounce(&mut self, clock: u64) -> Vec<u8> {
        let version = self.versions[&self.me].saturating_add(1).max(clock);
        self.versions.insert(self.me.clone(), version);
        let live = self
            .neighbours
            .iter()
            .zip(&self.up)
            .filter(|(_, up)| **up)
            .map(|(name, _)| name.clone())
            .collect();
        self.claims.insert(self.me.clone(), live);
        self.line(&self.me)
    }

    /// Takes in a link-state line (without its `\n`).
    pub fn apply(&mut self, line: &[u8]) -> Learned {
        let Some((server, version, live)) = parse(line) else {
            return Learned::Malformed;
        };
        let known = self.versions.get(server).copied();
        if known.is_some_and(|known| version <= known) {
            return Learned::Known;
        }
        if server == self.me {
            // An old run of ours, or a copy that went round: outbid it.
            self.versions.insert(self.me.clone(), version);
            return Learned::AboutMe;
        }
        self.versions.insert(server.to_owned(), version);
        self.claims.insert(
            server.to_owned(),
            live.into_iter().map(str::to_owned).collect(),
        );
        Learned::Newer
    }

    /// Every known claim as link-state lines: for a link that comes up.
    pub fn table(&self) -> Vec<Vec<u8>> {
        self.claims.keys().map(|server| self.line(server)).collect()
    }

    /// How many links both their ends claim: the live links of the herd as
    /// far as this server knows.
    pub fn live_links(&self) -> usize {
        self.live_pairs().len()
    }

    /// The live links of the herd as far as this server knows, each as its
    /// two servers' names in order.
    pub fn live_pairs(&self) -> Vec<(String, String)> {
        self.claims
            .iter()
            .flat_map(|(a, theirs)| theirs.iter().map(move |b| (a, b)))
            .filter(|(a, b)| a < b && self.claims.get(*b).is_some_and(|c| c.contains(*a)))
            .map(|(a, b)| (a.clone(), b.clone()))
            .collect()
    }

    /// The trees over the graph as now known.
    pub fn routes(&self) -> Routes {
        Routes::live(&self.me, &self.neighbours, &self.claims)
    }

    fn line(&self, server: &str) -> Vec<u8> {
        let mut line = format!("L {server} {}", self.versions[server]);
        for neighbour in &self.claims[server] {
            line.push(' ');
            line.push_str(neighbour);
        }
        line.into_bytes()
    }
}

/// The fields of `L <server> <version> <neighbour>...`.
fn parse(line: &[u8]) -> Option<(&str, u64, Vec<&str>)> {
    let line = std::str::from_utf8(line).ok()?;
    let rest = line.strip_prefix("L ")?;
    let (server, rest) = split_word(rest.as_bytes())?;
    let (version, rest) = split_word(rest)?;
    let server = std::str::from_utf8(server).ok().filter(|s| !s.is_empty())?;
    let version = parse_digits_u64(version)?;
    let rest = std::str::from_utf8(rest).ok()?;
    let live = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split(' ').collect()
    };
    if live.iter().any(|name| name.is_empty()) {
        return None;
    }
    Some((server, version, live))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::routes::Wait;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn claims_flood_by_version_and_both_ends_must_claim_a_link() {
        let mut a = Topology::new("A", names(&["B"]));
        let mut b = Topology::new("B", names(&["A", "C"]));
        let from_a = a.set_link(0, true, 10).unwrap();
        assert_eq!(from_a, b"L A 10 B");
        assert!(a.set_link(0, true, 11).is_none(), "no change, no line");
        assert_eq!(b.apply(&from_a), Learned::Newer);
        assert_eq!(b.apply(&from_a), Learned::Known);
        assert_eq!(b.apply(b"L A 9"), Learned::Known, "older");
        // B has not claimed A yet: the link is not live, A's reports go to
        // C by flooding (the tree does not reach C), to A lazily.
        let _ = b.set_link(1, true, 1);
        let from_b = b.set_link(0, true, 2).unwrap();
        assert_eq!(from_b, b"L B 2 A C", "above B's earlier version");
        assert_eq!(a.apply(&from_b), Learned::Newer);
        assert_eq!(a.routes().wait(b"A", None, 0), Wait::None, "B is A's child");
        assert_eq!(
            a.routes().wait(b"B", Some(0), 0),
            Wait::Hold,
            "back towards the origin"
        );
        assert_eq!((a.live_links(), b.live_links()), (1, 1));
        let mut c = Topology::new("C", names(&["B"]));
        assert_eq!(c.apply(&from_b), Learned::Newer);
        assert_eq!(c.live_links(), 0, "C does not know A's claim yet");
        let mut table = a.table();
        table.sort();
        assert_eq!(table, vec![b"L A 10 B".to_vec(), b"L B 2 A C".to_vec()]);
    }

    #[test]
    fn a_stale_claim_about_me_is_outbid() {
        let mut a = Topology::new("A", names(&["B"]));
        assert_eq!(a.apply(b"L A 50 B"), Learned::AboutMe);
        assert_eq!(a.reannounce(7), b"L A 51");
    }

    #[test]
    fn malformed_lines_are_refused() {
        let mut a = Topology::new("A", names(&["B"]));
        for bad in [
            &b"L"[..],
            b"L B",
            b"L B x",
            b"L B 1 C  D",
            b"L  1",
            b"X B 1",
            b"L B 1 \xff",
        ] {
            assert_eq!(
                a.apply(bad),
                Learned::Malformed,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
