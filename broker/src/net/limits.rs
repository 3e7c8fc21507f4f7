//! Connections per client address (issue #18): `connections_per_ip_max`, Kafka's
//! `max.connections.per.ip`, counted over every listener together when a connection is
//! accepted, before any byte of it is read. A connection over the limit is handed to its
//! front end as refused ([`crate::net::connection::Protocol::open_refused`]), which closes
//! it at once (Kafka, native) or refuses it in its protocol's own terms (AMQP's
//! connection.close 530, HTTP's 429); either way it holds no slot.
//!
//! (Connections per user are counted in the core at login, the only place that knows who
//! a connection is.)

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Open connections per client address.
#[derive(Debug)]
pub struct AddressLimits {
    /// Most connections per address (0: no limit).
    per_ip_max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection from an address, counted until dropped.
#[derive(Debug)]
pub struct AddressSlot {
    limits: Arc<AddressLimits>,
    ip: IpAddr,
}

/// Why a connection was refused, for the log and the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The address over its limit.
    pub ip: IpAddr,
    /// The limit.
    pub max: usize,
}

impl fmt::Display for Refusal {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "connection refused for {}: address connection limit ({}) is reached",
            self.ip, self.max
        )
    }
}

impl AddressLimits {
    /// At most `per_ip_max` connections per address (0: no limit).
    pub fn new(per_ip_max: usize) -> Arc<AddressLimits> {
        Arc::new(AddressLimits {
            per_ip_max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Counts a connection from `ip`, or refuses it (logged at WARN) when `ip` already has
    /// `per_ip_max` open. `Ok(None)`: no limit, nothing counted.
    ///
    /// # Errors
    /// [`Refusal`] when `ip` is at its limit.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Option<AddressSlot>, Refusal> {
        if self.per_ip_max == 0 {
            return Ok(None);
        }
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= self.per_ip_max {
            let refusal = Refusal {
                ip,
                max: self.per_ip_max,
            };
            tracing::warn!(%ip, max = self.per_ip_max, "connection refused: too many connections from this address");
            return Err(refusal);
        }
        *count += 1;
        Ok(Some(AddressSlot {
            limits: self.clone(),
            ip,
        }))
    }

    /// Connections from `ip` counted now.
    pub fn open(&self, ip: IpAddr) -> usize {
        self.open
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(&ip)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self
            .limits
            .open
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_counted_apart_until_their_slots_drop() {
        let limits = AddressLimits::new(2);
        let home: IpAddr = "127.0.0.1".parse().unwrap();
        let away: IpAddr = "10.0.0.1".parse().unwrap();
        let first = limits.admit(home).unwrap();
        let _second = limits.admit(home).unwrap();
        let refusal = limits.admit(home).unwrap_err();
        assert_eq!(refusal, Refusal { ip: home, max: 2 });
        assert!(refusal.to_string().contains("limit (2)"));
        assert!(limits.admit(away).unwrap().is_some());
        drop(first);
        assert_eq!(limits.open(home), 1);
        assert!(limits.admit(home).is_ok());
        assert!(AddressLimits::new(0).admit(home).unwrap().is_none());
    }
}
