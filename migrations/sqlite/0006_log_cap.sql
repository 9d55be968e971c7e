-- The job log is capped per job: the first lines and the newest are kept,
-- the ones between are dropped and counted (shown as "N lines dropped").
ALTER TABLE jobs ADD COLUMN log_lines BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN log_dropped BIGINT NOT NULL DEFAULT 0;
