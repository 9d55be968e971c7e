//! Prism tasks (`/api/prism/v4.0/config/tasks/{extId}`): polled to a
//! terminal status; the created entity is read by its `rel`, never as the
//! first of `entitiesAffected` (which may hold duplicates).

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

use super::{app_message, V4Client, V4Error};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskStatus {
    Queued,
    Running,
    Canceling,
    Succeeded,
    Failed,
    Canceled,
    Suspended,
    #[serde(other)]
    Unknown,
}

impl TaskStatus {
    /// CANCELED is terminal too (prism-go-client once looped on it).
    fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Canceled
        )
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    pub ext_id: String,
    #[serde(default)]
    pub operation: String,
    pub status: TaskStatus,
    #[serde(default)]
    pub progress_percentage: Option<u64>,
    #[serde(default)]
    pub entities_affected: Vec<Value>,
    #[serde(default)]
    pub error_messages: Vec<Value>,
    #[serde(default)]
    pub legacy_error_message: Option<String>,
}

impl Task {
    /// Why it failed: the AppMessages, else the legacy text (often the same).
    fn failure(&self) -> String {
        let msgs: Vec<String> = self.error_messages.iter().map(app_message).collect();
        if !msgs.is_empty() {
            msgs.join("; ")
        } else {
            self.legacy_error_message.clone().unwrap_or_default()
        }
    }
}

/// The extId of the affected entity whose `rel` is `rel` (e.g. `vmm:content:image`).
pub fn entity_of(task: &Task, rel: &str) -> Option<String> {
    task.entities_affected
        .iter()
        .find(|e| e.get("rel").and_then(Value::as_str) == Some(rel))
        .and_then(|e| e.get("extId").and_then(Value::as_str))
        .map(str::to_string)
}

impl V4Client {
    /// Polls the task until it ends; FAILED and CANCELED are errors.
    pub async fn wait_task(
        &self,
        ext_id: &str,
        limit: Duration,
        on_percent: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<Task, V4Error> {
        let started = Instant::now();
        let poll = Duration::from_millis(self.cfg().task_poll_ms.max(10));
        let path = format!("/api/prism/v4.0/config/tasks/{ext_id}");
        loop {
            let data = self.get(&path).await?.data;
            let task: Task = serde_json::from_value(data).map_err(|e| {
                V4Error::Protocol(format!("GET {path}: not a prism.v4.config.Task: {e}"))
            })?;
            if let Some(p) = task.progress_percentage {
                on_percent(p.min(100));
            }
            if task.status.is_terminal() {
                if task.status == TaskStatus::Succeeded {
                    return Ok(task);
                }
                return Err(V4Error::TaskFailed {
                    ext_id: ext_id.to_string(),
                    operation: task.operation.clone(),
                    status: format!("{:?}", task.status).to_uppercase(),
                    detail: task.failure(),
                });
            }
            if started.elapsed() >= limit {
                return Err(V4Error::TaskTimeout {
                    ext_id: ext_id.to_string(),
                    status: format!("{:?}", task.status).to_uppercase(),
                    secs: limit.as_secs(),
                });
            }
            tokio::time::sleep(poll).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_a_recorded_task_and_finds_the_entity_by_rel() {
        // Shape of prism-go-client's mock of a real task, plus a duplicate entity.
        let t: Task = serde_json::from_value(json!({
            "extId": "ZXJnb24=:278bbfc2-280f-529b-882b-14ea649b9a95", "operation": "kVmCreate",
            "progressPercentage": 100, "status": "SUCCEEDED", "$objectType": "prism.v4.config.Task",
            "entitiesAffected": [
                {"extId": "c1", "rel": "vmm:ahv:config:vm:disk"},
                {"extId": "vm-1", "rel": "vmm:ahv:config:vm", "$objectType": "prism.v4.config.EntityReference"}
            ]
        }))
        .unwrap();
        assert_eq!(t.status, TaskStatus::Succeeded);
        assert_eq!(entity_of(&t, "vmm:ahv:config:vm").as_deref(), Some("vm-1"));
        assert_eq!(entity_of(&t, "vmm:content:image"), None);
        let failed: Task = serde_json::from_value(json!({
            "extId": "x", "status": "FAILED",
            "errorMessages": [{"code": "VMM-30100", "message": "Image checksum mismatch", "errorGroup": "VALIDATION_ERROR"}],
            "legacyErrorMessage": "Image checksum mismatch"
        }))
        .unwrap();
        assert_eq!(
            failed.failure(),
            "VMM-30100 Image checksum mismatch (VALIDATION_ERROR)"
        );
        let odd: Task =
            serde_json::from_value(json!({"extId": "y", "status": "$UNKNOWN"})).unwrap();
        assert_eq!(odd.status, TaskStatus::Unknown);
    }
}
