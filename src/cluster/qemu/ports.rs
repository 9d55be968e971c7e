//! Free local TCP ports for SSH forwarding. A port handed out stays reserved in
//! this process until released, so two VMs starting at once never get the
//! same one between our probe and QEMU's bind.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;

static RESERVED: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A port on 127.0.0.1 that was free a moment ago and is not reserved here.
pub fn reserve() -> std::io::Result<u16> {
    for _ in 0..64 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let mut guard = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    Err(std::io::Error::other("no free local TCP port found"))
}

/// Returns a port to the pool (its VM is gone, or QEMU could not bind it).
pub fn release(port: u16) {
    let mut guard = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(set) = guard.as_mut() {
        set.remove(&port);
    }
}

/// Marks a port found in a VM's state file (started by an earlier process) as taken.
pub fn mark_taken(port: u16) {
    let mut guard = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
    guard.get_or_insert_with(HashSet::new).insert(port);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ports_are_distinct_and_bindable() {
        let ports: Vec<u16> = (0..32).map(|_| reserve().unwrap()).collect();
        let unique: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len());
        for p in &ports {
            assert!(*p > 0);
            TcpListener::bind((Ipv4Addr::LOCALHOST, *p)).expect("reserved port is free");
        }
        for p in ports {
            release(p);
        }
    }

    #[test]
    fn a_taken_port_is_never_handed_out() {
        let p = reserve().unwrap();
        release(p);
        mark_taken(p);
        for _ in 0..200 {
            let q = reserve().unwrap();
            assert_ne!(q, p);
            release(q);
        }
        release(p);
    }
}
