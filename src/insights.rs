//! What the insights page shows, computed from the store's rollups: scans
//! per day by outcome, failures by stage and by error class, stage and
//! boot-to-login durations per week, and the queue over time.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use regex::Regex;
use serde::Serialize;

use crate::domain::{now_millis, JobState, StageName};
use crate::store::insights::{Bucket, QueueSample, DAY_MS, SAMPLE_SLOT_MS, WEEK_MS};
use crate::store::{DynStore, StoreResult};

/// Days of outcomes and failures shown.
pub const WINDOW_DAYS: i64 = 30;
/// Weeks of durations shown.
pub const WINDOW_WEEKS: i64 = 12;
/// Queue samples shown (and kept): two weeks.
pub const QUEUE_DAYS: i64 = 14;
/// Failures classified per page: the newest ones in the window (classifying
/// 2,000 cost ~40 ms of the page at 100k jobs; 500 tell the same top ten).
pub const FAILURE_SAMPLE: i64 = 500;

#[derive(Clone, Debug, Serialize)]
pub struct Insights {
    pub generated_at: String,
    pub window_days: i64,
    pub days: Vec<DayOutcomes>,
    pub totals: DayOutcomes,
    pub failures: Failures,
    pub stage_durations: Vec<DurationSeries>,
    pub boot_to_login: Vec<DurationSeries>,
    pub queue: Queue,
}

/// Jobs that ended on one day (UTC).
#[derive(Clone, Debug, Default, Serialize)]
pub struct DayOutcomes {
    /// `2026-12-01`; "total" for the sum.
    pub date: String,
    pub succeeded: i64,
    pub failed: i64,
    pub cancelled: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Failures {
    /// Failed jobs classified (the newest, at most [`FAILURE_SAMPLE`]).
    pub classified: usize,
    /// Whether there were more failures in the window than were classified.
    pub sampled: bool,
    /// Failures per stage, most first.
    pub by_stage: Vec<Count>,
    /// The ten most common error classes.
    pub top_errors: Vec<ErrorClass>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Count {
    pub label: String,
    pub count: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ErrorClass {
    /// The error with its particulars (numbers, ids, URLs, quoted names) blanked.
    pub class: String,
    pub stage: Option<String>,
    pub count: i64,
    /// One real error of the class, as the job page shows it.
    pub example: String,
}

/// Durations per week for one key (a stage, or an image family).
#[derive(Clone, Debug, Serialize)]
pub struct DurationSeries {
    pub key: String,
    pub weeks: Vec<WeekPercentiles>,
}

#[derive(Clone, Debug, Serialize)]
pub struct WeekPercentiles {
    /// The week's first day, `2026-11-26`.
    pub week_start: String,
    pub runs: i64,
    /// Read off a histogram whose buckets are 25 % wide: within 12.5 %.
    pub p50_ms: i64,
    pub p95_ms: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Queue {
    pub queued: i64,
    pub waiting: i64,
    pub running: i64,
    /// Samples every five minutes over [`QUEUE_DAYS`] days.
    pub samples: Vec<QueueSampleView>,
}

#[derive(Clone, Debug, Serialize)]
pub struct QueueSampleView {
    pub at: String,
    pub at_ms: i64,
    pub queued: i64,
    pub waiting: i64,
    pub running: i64,
}

fn date_of(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

pub async fn load(store: &DynStore) -> StoreResult<Insights> {
    let now = now_millis();
    let today = now / DAY_MS;
    let first_day = today - WINDOW_DAYS + 1;
    let first_week = now / WEEK_MS - WINDOW_WEEKS + 1;

    let mut days: BTreeMap<i64, DayOutcomes> = (first_day..=today)
        .map(|d| {
            (
                d,
                DayOutcomes {
                    date: date_of(d * DAY_MS),
                    ..Default::default()
                },
            )
        })
        .collect();
    for c in store.daily_outcomes(first_day).await? {
        let Some(d) = days.get_mut(&c.day) else {
            continue;
        };
        match c.state {
            JobState::Succeeded => d.succeeded += c.jobs,
            JobState::Failed => d.failed += c.jobs,
            JobState::Cancelled => d.cancelled += c.jobs,
            _ => {}
        }
    }
    let days: Vec<DayOutcomes> = days.into_values().collect();
    let totals = DayOutcomes {
        date: "total".into(),
        succeeded: days.iter().map(|d| d.succeeded).sum(),
        failed: days.iter().map(|d| d.failed).sum(),
        cancelled: days.iter().map(|d| d.cancelled).sum(),
    };

    let failed = store
        .recent_failures(first_day * DAY_MS, FAILURE_SAMPLE)
        .await?;
    let failures = classify(
        failed.iter().filter_map(|f| f.error.as_deref()),
        totals.failed,
    );

    let stage_durations = series(store.stage_durations(first_week).await?, |k| {
        k.parse::<StageName>()
            .map(|s| s as usize)
            .unwrap_or(usize::MAX)
    });
    let boot_to_login = series(store.boot_durations(first_week).await?, |_| 0);

    let counts = store.count_by_state().await?;
    let count = |s: JobState| count_of(&counts, s);
    let samples = store
        .queue_samples((now - QUEUE_DAYS * DAY_MS) / SAMPLE_SLOT_MS)
        .await?
        .into_iter()
        .map(|s| QueueSampleView {
            at: crate::domain::fmt_millis(s.slot * SAMPLE_SLOT_MS),
            at_ms: s.slot * SAMPLE_SLOT_MS,
            queued: s.queued,
            waiting: s.waiting,
            running: s.running,
        })
        .collect();
    Ok(Insights {
        generated_at: crate::domain::fmt_millis(now),
        window_days: WINDOW_DAYS,
        days,
        totals,
        failures,
        stage_durations,
        boot_to_login,
        queue: Queue {
            queued: count(JobState::Queued),
            waiting: count(JobState::Waiting),
            running: count(JobState::Running),
            samples,
        },
    })
}

fn count_of(counts: &[(JobState, i64)], state: JobState) -> i64 {
    counts
        .iter()
        .find(|(s, _)| *s == state)
        .map(|(_, n)| *n)
        .unwrap_or(0)
}

/// The queue sample the reaper stores now (at most one per slot in all).
pub async fn sample_queue(store: &DynStore) -> StoreResult<()> {
    let counts = store.count_by_state().await?;
    let count = |s: JobState| count_of(&counts, s);
    let now = now_millis();
    store
        .sample_queue(
            QueueSample {
                slot: now / SAMPLE_SLOT_MS,
                queued: count(JobState::Queued),
                waiting: count(JobState::Waiting),
                running: count(JobState::Running),
            },
            (now - QUEUE_DAYS * DAY_MS) / SAMPLE_SLOT_MS,
        )
        .await
}

/// Groups histogram buckets by key and week; keys in `order`'s order.
fn series(rows: Vec<Bucket>, order: impl Fn(&str) -> usize) -> Vec<DurationSeries> {
    let mut by_key: BTreeMap<String, BTreeMap<i64, Vec<Bucket>>> = BTreeMap::new();
    for b in rows {
        by_key
            .entry(b.key.clone())
            .or_default()
            .entry(b.week)
            .or_default()
            .push(b);
    }
    let mut out: Vec<DurationSeries> = by_key
        .into_iter()
        .map(|(key, weeks)| DurationSeries {
            key,
            weeks: weeks
                .into_iter()
                .map(|(week, buckets)| WeekPercentiles {
                    week_start: date_of(week * WEEK_MS),
                    runs: buckets.iter().map(|b| b.runs).sum(),
                    p50_ms: percentile(&buckets, 0.50),
                    p95_ms: percentile(&buckets, 0.95),
                })
                .collect(),
        })
        .collect();
    out.sort_by_key(|s| (order(&s.key), s.key.clone()));
    out
}

/// The `q` quantile of a histogram: the geometric middle of the bucket the
/// quantile's rank falls in.
pub fn percentile(buckets: &[Bucket], q: f64) -> i64 {
    let mut sorted: Vec<&Bucket> = buckets.iter().filter(|b| b.runs > 0).collect();
    sorted.sort_by_key(|b| b.lo_ms);
    let total: i64 = sorted.iter().map(|b| b.runs).sum();
    if total == 0 {
        return 0;
    }
    let rank = ((q * total as f64).ceil() as i64).max(1);
    let mut seen = 0;
    for b in &sorted {
        seen += b.runs;
        if seen >= rank {
            let lo = b.lo_ms.max(0) as f64;
            // The last bucket is open-ended.
            let hi = (b.hi_ms as f64).min(lo * 1.25 + 1.0);
            return if lo == 0.0 {
                0
            } else {
                (lo * hi).sqrt().round() as i64
            };
        }
    }
    sorted.last().map(|b| b.lo_ms).unwrap_or(0)
}

/// Failures by stage and by error class, from the runner's error lines
/// ("fetch failed: HTTP 404 Not Found for https://…").
pub fn classify<'a>(errors: impl Iterator<Item = &'a str>, failed_in_window: i64) -> Failures {
    let mut by_stage: BTreeMap<String, i64> = BTreeMap::new();
    let mut classes: BTreeMap<(Option<String>, String), (i64, String)> = BTreeMap::new();
    let mut classified = 0usize;
    // The same error text (a flaky mirror, the reaper's fixed lines) is
    // classified once.
    let mut seen: std::collections::HashMap<&str, (Option<String>, String)> =
        std::collections::HashMap::new();
    for e in errors {
        classified += 1;
        let (stage, class) = seen
            .entry(e)
            .or_insert_with(|| {
                let (stage, rest) = split_stage(e);
                (stage, error_class(rest))
            })
            .clone();
        *by_stage
            .entry(stage.clone().unwrap_or_else(|| "(no stage)".into()))
            .or_default() += 1;
        let entry = classes
            .entry((stage, class))
            .or_insert_with(|| (0, e.to_string()));
        entry.0 += 1;
    }
    let mut by_stage: Vec<Count> = by_stage
        .into_iter()
        .map(|(label, count)| Count { label, count })
        .collect();
    by_stage.sort_by(|a, b| b.count.cmp(&a.count).then(a.label.cmp(&b.label)));
    let mut top: Vec<ErrorClass> = classes
        .into_iter()
        .map(|((stage, class), (count, example))| ErrorClass {
            class,
            stage,
            count,
            example,
        })
        .collect();
    top.sort_by(|a, b| b.count.cmp(&a.count).then(a.class.cmp(&b.class)));
    top.truncate(10);
    Failures {
        classified,
        sampled: (classified as i64) < failed_in_window,
        by_stage,
        top_errors: top,
    }
}

/// "fetch failed: …" → (Some("fetch"), "…"), when the head names a stage.
fn split_stage(e: &str) -> (Option<String>, &str) {
    if let Some((head, rest)) = e.split_once(" failed: ") {
        if head.parse::<StageName>().is_ok() {
            return (Some(head.to_string()), rest);
        }
    }
    (None, e)
}

/// The error with what differs between occurrences blanked: URLs, quoted
/// text, paths, ids and numbers; its first line, at most 140 characters.
pub fn error_class(e: &str) -> String {
    static PARTS: OnceLock<[(Regex, &'static str); 5]> = OnceLock::new();
    let parts = PARTS.get_or_init(|| {
        [
            (
                Regex::new(r"[a-zA-Z][a-zA-Z0-9+.-]*://\S+").unwrap(),
                "<url>",
            ),
            (Regex::new(r#""[^"]*"|'[^']*'|`[^`]*`"#).unwrap(), "\"…\""),
            (
                Regex::new(r"(?:\.{0,2}/[\w.@+-]+){2,}/?").unwrap(),
                "<path>",
            ),
            (Regex::new(r"\b[0-9a-fA-F-]{8,}\b").unwrap(), "<id>"),
            (Regex::new(r"\b\d+(?:\.\d+)?\b").unwrap(), "N"),
        ]
    });
    let mut s = e.lines().next().unwrap_or("").trim().to_string();
    for (re, with) in parts.iter() {
        s = re.replace_all(&s, *with).into_owned();
    }
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match s.char_indices().nth(140) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(lo: i64, hi: i64, runs: i64) -> Bucket {
        Bucket {
            week: 0,
            key: "fetch".into(),
            lo_ms: lo,
            hi_ms: hi,
            runs,
        }
    }

    #[test]
    fn percentiles_come_from_the_bucket_the_rank_falls_in() {
        let h = [b(1000, 1250, 50), b(4000, 5000, 45), b(60000, 75000, 5)];
        assert_eq!(percentile(&h, 0.5), 1118); // sqrt(1000 * 1250)
        assert_eq!(percentile(&h, 0.95), 4472);
        assert_eq!(percentile(&h, 0.96), 67082);
        assert_eq!(percentile(&[], 0.5), 0);
    }

    #[test]
    fn errors_that_differ_only_in_particulars_are_one_class() {
        let a = error_class("HTTP 404 Not Found for https://a.example/x.qcow2 (after 3 tries)");
        let b = error_class("HTTP 404 Not Found for https://b.example/y/z.raw (after 12 tries)");
        assert_eq!(a, b);
        assert_eq!(a, "HTTP N Not Found for <url> (after N tries)");
        assert_eq!(
            error_class("cannot open \"disk.raw\" in job 0192f0c1-8a6e-7c3d-9f10-1b2c3d4e5f60"),
            "cannot open \"…\" in job <id>"
        );
        assert_eq!(
            error_class("no space in /srv/vmscan/jobs/abc: need 12 GiB"),
            "no space in <path>: need N GiB"
        );
    }

    #[test]
    fn failures_are_counted_by_stage_and_class() {
        let errors = [
            "fetch failed: HTTP 404 Not Found for https://a/x",
            "fetch failed: HTTP 404 Not Found for https://b/y",
            "inspect failed: not a disk image: 12 bytes",
            "worker lost again during teardown; job failed",
        ];
        let f = classify(errors.iter().copied(), 10);
        assert_eq!(f.classified, 4);
        assert!(f.sampled);
        assert_eq!(f.by_stage[0].label, "fetch");
        assert_eq!(f.by_stage[0].count, 2);
        assert_eq!(f.top_errors[0].count, 2);
        assert_eq!(f.top_errors[0].stage.as_deref(), Some("fetch"));
        assert!(f.top_errors[0]
            .example
            .starts_with("fetch failed: HTTP 404"));
        assert_eq!(f.by_stage.len(), 3);
    }
}
