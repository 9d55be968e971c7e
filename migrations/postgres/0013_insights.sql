-- The insights page (/insights) reads small rollups instead of the history,
-- so it costs the same at 100k jobs as at 100:
--   job_daily        finished jobs per day and outcome (deltas folded by the
--                    reaper, as job_counts in 0008: no shared counter row is
--                    locked by every finish);
--   stage_weekly     succeeded stage runs per week, stage and duration bucket
--                    (a histogram: p50/p95 are read off its buckets);
--   boot_weekly      boot-to-login times per week and image family, recorded
--                    by the VM stage;
--   queue_samples    queued / waiting / running, sampled by the reaper.
-- Days and weeks are counted from the Unix epoch in UTC (week 0 starts on a
-- Thursday; the page labels each week by its first day).

-- Duration buckets: [lo_ms, hi_ms), each about 25 % wider than the one
-- before, so a percentile read off them is within 12.5 % of the true value.
CREATE TABLE duration_buckets (
    bucket INTEGER PRIMARY KEY,
    lo_ms  BIGINT NOT NULL,
    hi_ms  BIGINT NOT NULL
);
INSERT INTO duration_buckets (bucket, lo_ms, hi_ms) VALUES
    (0, 0, 1),
    (1, 1, 2),
    (2, 2, 3),
    (3, 3, 4),
    (4, 4, 5),
    (5, 5, 7),
    (6, 7, 9),
    (7, 9, 12),
    (8, 12, 15),
    (9, 15, 19),
    (10, 19, 24),
    (11, 24, 30),
    (12, 30, 38),
    (13, 38, 48),
    (14, 48, 60),
    (15, 60, 75),
    (16, 75, 94),
    (17, 94, 118),
    (18, 118, 148),
    (19, 148, 185),
    (20, 185, 232),
    (21, 232, 290),
    (22, 290, 363),
    (23, 363, 454),
    (24, 454, 568),
    (25, 568, 710),
    (26, 710, 888),
    (27, 888, 1110),
    (28, 1110, 1388),
    (29, 1388, 1735),
    (30, 1735, 2169),
    (31, 2169, 2712),
    (32, 2712, 3390),
    (33, 3390, 4238),
    (34, 4238, 5298),
    (35, 5298, 6623),
    (36, 6623, 8279),
    (37, 8279, 10349),
    (38, 10349, 12937),
    (39, 12937, 16172),
    (40, 16172, 20215),
    (41, 20215, 25269),
    (42, 25269, 31587),
    (43, 31587, 39484),
    (44, 39484, 49355),
    (45, 49355, 61694),
    (46, 61694, 77118),
    (47, 77118, 96398),
    (48, 96398, 120498),
    (49, 120498, 150623),
    (50, 150623, 188279),
    (51, 188279, 235349),
    (52, 235349, 294187),
    (53, 294187, 367734),
    (54, 367734, 459668),
    (55, 459668, 574585),
    (56, 574585, 718232),
    (57, 718232, 897790),
    (58, 897790, 1122238),
    (59, 1122238, 1402798),
    (60, 1402798, 1753498),
    (61, 1753498, 2191873),
    (62, 2191873, 2739842),
    (63, 2739842, 3424803),
    (64, 3424803, 4281004),
    (65, 4281004, 5351255),
    (66, 5351255, 6689069),
    (67, 6689069, 8361337),
    (68, 8361337, 10451672),
    (69, 10451672, 13064590),
    (70, 13064590, 16330738),
    (71, 16330738, 20413423),
    (72, 20413423, 25516779),
    (73, 25516779, 31895974),
    (74, 31895974, 39869968),
    (75, 39869968, 49837460),
    (76, 49837460, 62296825),
    (77, 62296825, 77871032),
    (78, 77871032, 97338790),
    (79, 97338790, 121673488),
    (80, 121673488, 152091860),
    (81, 152091860, 190114825),
    (82, 190114825, 237643532),
    (83, 237643532, 297054415),
    (84, 297054415, 371318019),
    (85, 371318019, 464147524),
    (86, 464147524, 580184405),
    (87, 580184405, 9223372036854775807);

CREATE TABLE job_daily (
    day   BIGINT NOT NULL,
    state TEXT NOT NULL,
    n     BIGINT NOT NULL,
    PRIMARY KEY (day, state)
);
CREATE TABLE job_daily_deltas (
    id    BIGSERIAL PRIMARY KEY,
    day   BIGINT NOT NULL,
    state TEXT NOT NULL,
    n     BIGINT NOT NULL
);
CREATE FUNCTION jobs_daily_delta() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state IN ('succeeded', 'failed', 'cancelled')
       AND (TG_OP = 'INSERT' OR OLD.state NOT IN ('succeeded', 'failed', 'cancelled')) THEN
        INSERT INTO job_daily_deltas (day, state, n)
            VALUES (COALESCE(NEW.finished_at, NEW.updated_at) / 86400000, NEW.state, 1);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_daily AFTER INSERT OR UPDATE OF state ON jobs
    FOR EACH ROW EXECUTE FUNCTION jobs_daily_delta();
INSERT INTO job_daily (day, state, n)
    SELECT COALESCE(finished_at, updated_at) / 86400000, state, COUNT(*) FROM jobs
    WHERE state IN ('succeeded', 'failed', 'cancelled') GROUP BY 1, 2;

CREATE TABLE stage_weekly (
    week   BIGINT NOT NULL,
    stage  TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    runs   BIGINT NOT NULL,
    PRIMARY KEY (week, stage, bucket)
);
-- One counter row per (week, stage, bucket), like stage_totals: a finishing
-- stage run takes this row and then its stage_totals row, always in that
-- order, so two finishes wait for each other but never deadlock.
CREATE FUNCTION stage_runs_weekly() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state = 'succeeded' AND NEW.duration_ms IS NOT NULL
       AND (TG_OP = 'INSERT' OR OLD.state IS DISTINCT FROM 'succeeded') THEN
        INSERT INTO stage_weekly (week, stage, bucket, runs)
            SELECT NEW.started_at / 604800000, NEW.stage, b.bucket, 1 FROM duration_buckets b
            WHERE NEW.duration_ms >= b.lo_ms AND NEW.duration_ms < b.hi_ms
            ON CONFLICT (week, stage, bucket) DO UPDATE SET runs = stage_weekly.runs + 1;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER stage_runs_weekly AFTER INSERT OR UPDATE OF state ON stage_runs
    FOR EACH ROW EXECUTE FUNCTION stage_runs_weekly();
INSERT INTO stage_weekly (week, stage, bucket, runs)
    SELECT r.started_at / 604800000, r.stage, b.bucket, COUNT(*)
    FROM stage_runs r JOIN duration_buckets b ON r.duration_ms >= b.lo_ms AND r.duration_ms < b.hi_ms
    WHERE r.state = 'succeeded' GROUP BY 1, 2, 3;

CREATE TABLE boot_weekly (
    week   BIGINT NOT NULL,
    family TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    runs   BIGINT NOT NULL,
    PRIMARY KEY (week, family, bucket)
);

CREATE TABLE queue_samples (
    slot    BIGINT PRIMARY KEY,  -- sample time / 5 minutes
    queued  BIGINT NOT NULL,
    waiting BIGINT NOT NULL,
    running BIGINT NOT NULL
);
