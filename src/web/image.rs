//! `GET /api/v1/jobs/{id}/image`: the job's image, for clusters that pull
//! it from a URL (Nutanix `image_source = "url"`) instead of being sent it.
//! Served only while the job runs its cluster-upload stage, and only with
//! the job's key (`?key=`): the cluster sends no login.

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use tower::ServiceExt;
use tower_http::services::ServeFile;

use super::api::parse_id;
use super::auth::{Access, Denied};
use super::routes::Routes;
use super::{ApiError, ApiResult, AppState};
use crate::domain::{JobState, StageName, StageState};
use crate::identity::secret;

pub fn routes(r: Routes) -> Routes {
    r.get("/api/v1/jobs/{id}/image", Access::ImageKey, image)
}

/// Image pull keys: derived from one secret every replica shares.
pub struct ImageKeys {
    secret: SecretString,
}

impl ImageKeys {
    pub fn new(secret: SecretString) -> Self {
        ImageKeys { secret }
    }

    pub fn key(&self, job: &str) -> String {
        secret::image_key(self.secret.expose_secret(), job)
    }
}

async fn image(
    State(st): State<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let sent = req
        .uri()
        .query()
        .and_then(|q| url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "key"))
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let want = st.image_keys.key(&id.to_string());
    if !secret::constant_time_eq(sent.as_bytes(), want.as_bytes()) {
        return Err(Denied::forbidden(format!(
            "job {id}'s image is served only to the cluster it is uploaded to (a wrong or missing key)"
        ))
        .into());
    }
    let job = st
        .store
        .get_job(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job {id} not found")))?;
    let uploading = job.state == JobState::Running
        && job.current_stage.as_deref() == Some(StageName::ClusterUpload.as_str());
    if !uploading {
        return Err(ApiError::NotFound(format!(
            "job {id} is not uploading its image now; it is served only during cluster-upload"
        )));
    }
    // The newest image of the current run: converted, else extracted, else fetched.
    let runs = st.store.stage_runs(id).await?;
    let path = [StageName::Convert, StageName::Extract, StageName::Fetch]
        .iter()
        .find_map(|s| {
            runs.iter()
                .rev()
                .filter(|r| r.attempt >= job.run_base_attempt)
                .find(|r| r.stage == s.as_str() && r.state == StageState::Succeeded)
                .and_then(|r| r.detail.get("path")?.as_str().map(str::to_string))
        })
        .ok_or_else(|| ApiError::NotFound(format!("job {id} has no image file")))?;
    // ServeFile answers HEAD and Range requests (a cluster may resume).
    let resp = ServeFile::new(path)
        .oneshot(req)
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("serving the image: {e}")))?;
    Ok(resp.into_response())
}
