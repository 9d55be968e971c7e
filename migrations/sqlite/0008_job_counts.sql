-- The dashboard and /metrics count jobs per state on every request; counting
-- the history grew with it (9.9 ms at 100k jobs). The counts are kept by
-- triggers instead, the same way as on PostgreSQL (see its 0008): each state
-- change inserts a delta, a read sums base + deltas, and the reaper folds the
-- deltas into the base (Store::fold_job_counts). SQLite serialises writers,
-- so it would not deadlock on shared counter rows, but one design for both
-- backends keeps one read and one fold.
CREATE TABLE job_counts (
    state TEXT PRIMARY KEY,
    n     INTEGER NOT NULL
);
CREATE TABLE job_count_deltas (
    id    INTEGER PRIMARY KEY AUTOINCREMENT,
    state TEXT NOT NULL,
    n     INTEGER NOT NULL
);

CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs BEGIN
    INSERT INTO job_count_deltas (state, n) VALUES (NEW.state, 1);
END;
CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs BEGIN
    INSERT INTO job_count_deltas (state, n) VALUES (OLD.state, -1);
END;
CREATE TRIGGER jobs_count_update AFTER UPDATE OF state ON jobs WHEN OLD.state IS NOT NEW.state BEGIN
    INSERT INTO job_count_deltas (state, n) VALUES (OLD.state, -1), (NEW.state, 1);
END;

INSERT INTO job_counts (state, n) SELECT state, COUNT(*) FROM jobs GROUP BY state;
