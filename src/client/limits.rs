//! Client connections per IP address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Client connections per IP address.
#[derive(Default)]
pub struct PerIp {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in the per-address count, given back on drop.
pub struct PerIpSlot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    /// A place for one more connection from `ip`, unless it holds `limit`.
    pub fn claim(table: &Arc<PerIp>, ip: IpAddr, limit: usize) -> Option<PerIpSlot> {
        let mut counts = table.lock();
        let count = counts.entry(ip).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(PerIpSlot {
            table: table.clone(),
            ip,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.counts.lock().expect("per-IP lock is never poisoned")
    }
}

impl Drop for PerIpSlot {
    fn drop(&mut self) {
        let mut counts = self.table.lock();
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_its_limit_and_gets_places_back() {
        let table = Arc::new(PerIp::default());
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = PerIp::claim(&table, a, 2).unwrap();
        let _second = PerIp::claim(&table, a, 2).unwrap();
        assert!(PerIp::claim(&table, a, 2).is_none());
        assert!(
            PerIp::claim(&table, b, 2).is_some(),
            "other addresses unaffected"
        );
        drop(first);
        assert!(PerIp::claim(&table, a, 2).is_some());
    }
}
