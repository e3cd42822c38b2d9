//! Herds of any size and shape, made up: `herd config --servers N`.

use std::path::PathBuf;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::{HerdConfig, Limits, LoggingConfig, PlacesConfig, ServerConfig, StorageConfig};

/// How the servers of a generated herd are linked.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Shape {
    /// Each server to the next, the last to the first.
    Ring,
    /// A ring, and each server of the first half to the one opposite.
    Chords,
    /// A random connected graph of about this average degree.
    Random { degree: f64, seed: u64 },
    /// Every server to every other.
    Mesh,
}

impl std::str::FromStr for Shape {
    type Err = String;

    /// `ring`, `chords`, `mesh`, or `random:DEGREE[:SEED]`.
    fn from_str(text: &str) -> Result<Self, String> {
        let mut parts = text.split(':');
        let shape = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("ring"), None, ..) => Shape::Ring,
            (Some("chords"), None, ..) => Shape::Chords,
            (Some("mesh"), None, ..) => Shape::Mesh,
            (Some("random"), degree, seed, None) => {
                let degree = match degree {
                    Some(degree) => degree
                        .parse::<f64>()
                        .ok()
                        .filter(|d| d.is_finite() && *d >= 1.0)
                        .ok_or_else(|| {
                            format!("random:{degree}: the degree is a number, 1 or more")
                        })?,
                    None => 3.0,
                };
                let seed = match seed {
                    Some(seed) => seed
                        .parse()
                        .map_err(|_| format!("random:…:{seed}: the seed is a whole number"))?,
                    None => 1,
                };
                Shape::Random { degree, seed }
            }
            _ => {
                return Err(format!(
                    "unknown topology {text:?}: ring, chords, mesh or random:DEGREE[:SEED]"
                ));
            }
        };
        Ok(shape)
    }
}

impl Shape {
    /// The links between `n` servers, numbered from 0, each once.
    pub fn links(self, n: usize) -> Vec<(usize, usize)> {
        let mut links = Vec::new();
        let mut add = |a: usize, b: usize| {
            let pair = (a.min(b), a.max(b));
            if a != b && !links.contains(&pair) {
                links.push(pair);
            }
        };
        match self {
            Shape::Ring => (0..n).for_each(|i| add(i, (i + 1) % n)),
            Shape::Chords => {
                (0..n).for_each(|i| add(i, (i + 1) % n));
                (0..n / 2).for_each(|i| add(i, i + n / 2));
            }
            Shape::Mesh => (0..n).for_each(|a| (a + 1..n).for_each(|b| add(a, b))),
            Shape::Random { degree, seed } => {
                return random_connected(&mut StdRng::seed_from_u64(seed), n, degree);
            }
        }
        links
    }
}

/// A connected graph of `n` servers: a random spanning tree, then random
/// extra links until the average degree is about `degree`.
pub fn random_connected(rng: &mut StdRng, n: usize, degree: f64) -> Vec<(usize, usize)> {
    let mut links = Vec::new();
    for i in 1..n {
        links.push((rng.random_range(0..i), i));
    }
    let wanted = (((degree * n as f64) / 2.0) as usize).min(n * n.saturating_sub(1) / 2);
    while links.len() < wanted {
        let (a, b) = (rng.random_range(0..n), rng.random_range(0..n));
        let pair = (a.min(b), a.max(b));
        if a != b && !links.contains(&pair) {
            links.push(pair);
        }
    }
    links
}

/// A herd of `n` servers named `S01`, `S02`, … on 127.0.0.1, linked as
/// `shape` says: client ports from `base_port`, peer ports from
/// `base_port + n`, admin ports from `base_port + 2n`.
pub fn generate(n: usize, shape: Shape, base_port: u16) -> Result<HerdConfig, String> {
    if n == 0 {
        return Err("a herd has at least one server".into());
    }
    let last = usize::from(base_port) + 3 * n;
    if last > usize::from(u16::MAX) {
        return Err(format!(
            "{n} servers from port {base_port} run past port 65535"
        ));
    }
    let width = n.to_string().len().max(2);
    let name = |i: usize| format!("S{:0width$}", i + 1);
    let mut neighbours = vec![Vec::new(); n];
    for (a, b) in shape.links(n) {
        neighbours[a].push(name(b));
    }
    let port = |offset: usize| usize::from(base_port) + offset;
    Ok(HerdConfig {
        log_dir: PathBuf::from("logs"),
        secret: None,
        old_secrets: Vec::new(),
        secrets: Vec::new(),
        places: PlacesConfig::default(),
        limits: Limits::default(),
        storage: StorageConfig::default(),
        history: None,
        logging: LoggingConfig::default(),
        tls: None,
        servers: (0..n)
            .map(|i| ServerConfig {
                name: name(i),
                client: Some(format!("127.0.0.1:{}", port(i))),
                client_tls: None,
                peer: format!("127.0.0.1:{}", port(n + i)),
                admin: Some(format!("127.0.0.1:{}", port(2 * n + i))),
                neighbours: std::mem::take(&mut neighbours[i]),
                places: None,
                tls: None,
            })
            .collect(),
        warnings: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn connected(n: usize, links: &[(usize, usize)]) -> bool {
        let mut seen = vec![false; n];
        let mut stack = vec![0];
        seen[0] = true;
        while let Some(at) = stack.pop() {
            for &(a, b) in links {
                for (x, y) in [(a, b), (b, a)] {
                    if x == at && !seen[y] {
                        seen[y] = true;
                        stack.push(y);
                    }
                }
            }
        }
        seen.iter().all(|s| *s)
    }

    #[test]
    fn shapes_have_their_links_and_are_connected() {
        assert_eq!(Shape::Ring.links(5).len(), 5);
        assert_eq!(Shape::Mesh.links(6).len(), 15);
        assert_eq!(Shape::Chords.links(10).len(), 15);
        for n in [2, 5, 20, 50] {
            for shape in [
                Shape::Ring,
                Shape::Chords,
                Shape::Mesh,
                Shape::Random {
                    degree: 3.0,
                    seed: n as u64,
                },
            ] {
                let links = shape.links(n);
                assert!(connected(n, &links), "{shape:?} of {n}");
                assert!(links.iter().all(|&(a, b)| a < b && b < n));
            }
        }
        let random = Shape::Random {
            degree: 4.0,
            seed: 9,
        }
        .links(50);
        assert_eq!(random.len(), 100, "average degree 4");
        assert_eq!(
            random,
            Shape::Random {
                degree: 4.0,
                seed: 9
            }
            .links(50),
            "seeded"
        );
    }

    #[test]
    fn topologies_parse_with_clear_errors() {
        assert_eq!("ring".parse::<Shape>(), Ok(Shape::Ring));
        assert_eq!(
            "random".parse::<Shape>(),
            Ok(Shape::Random {
                degree: 3.0,
                seed: 1
            })
        );
        assert_eq!(
            "random:2.5:7".parse::<Shape>(),
            Ok(Shape::Random {
                degree: 2.5,
                seed: 7
            })
        );
        for bad in [
            "",
            "star",
            "random:x",
            "random:0.5",
            "random:3:x",
            "ring:3",
            "random:3:1:2",
        ] {
            assert!(bad.parse::<Shape>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_generated_herd_is_a_valid_config() {
        let config = generate(20, Shape::Chords, 20000).unwrap();
        let again = HerdConfig::parse(&config.to_toml(), "generated", Path::new("/")).unwrap();
        assert_eq!(again.servers.len(), 20);
        assert_eq!(again.servers[0].name, "S01");
        assert_eq!(again.servers[19].client.as_deref(), Some("127.0.0.1:20019"));
        assert_eq!(again.servers[0].peer, "127.0.0.1:20020");
        let links: usize = again.servers.iter().map(|s| s.neighbours.len()).sum();
        assert_eq!(links, 2 * 30, "links are listed at both ends once parsed");
        assert!(generate(0, Shape::Ring, 1).is_err());
        assert!(generate(100, Shape::Ring, 65500).is_err());
    }
}
