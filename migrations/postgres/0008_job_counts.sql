-- The dashboard and /metrics count jobs per state on every request. Counting
-- the history (SELECT state, COUNT(*) FROM jobs GROUP BY state) grew with it:
-- 24.8 ms on PostgreSQL at 100k jobs, which put the dashboard's p99 over
-- 100 ms. The counts are now kept by a trigger.
--
-- A trigger that updated one counter row per state would make every state
-- change of every job lock that row until its transaction ends: claims and
-- finishes of unrelated jobs would queue behind each other, and two
-- transitions in opposite directions (running -> waiting, waiting -> running)
-- would lock the two rows in opposite orders and deadlock. So the trigger
-- only INSERTs a delta (insert-only: no row is shared between writers), a
-- read sums base + deltas in one statement (one snapshot), and the reaper
-- folds deltas into the base now and then (Store::fold_job_counts).
CREATE TABLE job_counts (
    state TEXT PRIMARY KEY,
    n     BIGINT NOT NULL
);
CREATE TABLE job_count_deltas (
    id    BIGSERIAL PRIMARY KEY,
    state TEXT NOT NULL,
    n     BIGINT NOT NULL
);

CREATE FUNCTION jobs_count_delta() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO job_count_deltas (state, n) VALUES (NEW.state, 1);
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO job_count_deltas (state, n) VALUES (OLD.state, -1);
    ELSIF OLD.state IS DISTINCT FROM NEW.state THEN
        INSERT INTO job_count_deltas (state, n) VALUES (OLD.state, -1), (NEW.state, 1);
    END IF;
    RETURN NULL;
END
$$;

-- The trigger first: CREATE TRIGGER locks jobs against writes until this
-- migration commits, so the count below and the trigger see the same rows.
CREATE TRIGGER jobs_count AFTER INSERT OR DELETE OR UPDATE OF state ON jobs
    FOR EACH ROW EXECUTE FUNCTION jobs_count_delta();

INSERT INTO job_counts (state, n) SELECT state, COUNT(*) FROM jobs GROUP BY state;
