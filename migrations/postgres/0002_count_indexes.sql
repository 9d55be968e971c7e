-- The dashboard (`GET /`) and `/metrics` count the whole history on every
-- request: SELECT state, COUNT(*) FROM jobs GROUP BY state. With 100,000
-- finished jobs the planner ran it as a sequential scan + HashAggregate
-- (~40 ms) rather than an index-only scan of jobs_state_id (state, id). A
-- (state) index is tiny thanks to B-tree deduplication (~700 kB per 100,000
-- jobs), so the planner picks an index-only scan of it: ~5 ms. The count is
-- still linear in the history; see benches/store_latency.rs (issue 2).
-- (SQLite also gets a covering index for stage_stats; here a similar one was
-- only ~1.5x faster and the planner did not reliably use it, so it is left out.)
CREATE INDEX jobs_state ON jobs (state);
