-- The dashboard (`GET /`) and `/metrics` count the whole history on every
-- request: COUNT(*) ... GROUP BY state on jobs, SUM(duration_ms) ... GROUP BY
-- stage, state on stage_runs. The second scanned the stage_runs table and
-- sorted in a temp B-tree (~170 ms with 100,000 jobs); a covering partial
-- index in GROUP BY order makes it a covering index scan (~35 ms). A narrow
-- (state) index shrinks the count's scan compared with jobs_state_id (state,
-- id): ~5 -> ~4 ms; PostgreSQL gets the same index (there it is ~8x).
-- Both queries stay linear in the history; see benches/store_latency.rs (issue 2).
CREATE INDEX jobs_state ON jobs (state);
CREATE INDEX stage_runs_stats ON stage_runs (stage, state, duration_ms)
    WHERE finished_at IS NOT NULL;
