//! How many live event streams (SSE) are open, in all and per user: each
//! holds a connection and polls the database, so both are bounded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::ApiError;

#[derive(Default)]
pub struct Streams {
    open: Mutex<(usize, HashMap<String, usize>)>,
}

/// One open stream; closing it (drop) frees its place.
pub struct Slot {
    streams: Arc<Streams>,
    user: String,
}

impl Streams {
    pub fn open(
        self: &Arc<Self>,
        user: &str,
        max_total: usize,
        max_per_user: usize,
    ) -> Result<Slot, ApiError> {
        let mut g = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mine = g.1.get(user).copied().unwrap_or(0);
        if g.0 >= max_total {
            return Err(ApiError::TooMany(
                format!("{} live views are open, the most vmscan serves (server.max_event_streams); close one or try again later", g.0),
                10,
            ));
        }
        if mine >= max_per_user {
            return Err(ApiError::TooMany(
                format!("{user} has {mine} live views open, the most one user may (server.max_event_streams_per_user); close one"),
                10,
            ));
        }
        g.0 += 1;
        *g.1.entry(user.to_string()).or_default() += 1;
        Ok(Slot {
            streams: self.clone(),
            user: user.to_string(),
        })
    }

    /// Streams open now (in all).
    pub fn count(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).0
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self.streams.open.lock().unwrap_or_else(|p| p.into_inner());
        g.0 = g.0.saturating_sub(1);
        if let Some(n) = g.1.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                g.1.remove(&self.user);
            }
        }
    }
}
