//! The API's one error type: a status and a message for people, as JSON.
//! Internal errors are logged and shown without their details.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unprocessable(String),
    /// A manifest with errors: each is listed with its image and field.
    #[error("{0}")]
    Manifest(crate::manifest::ManifestErrors),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request body too large (limit {0} bytes)")]
    TooLarge(usize),
    #[error("{}", .0.message)]
    Denied(super::auth::Denied),
    /// A limit was reached; try again after this many seconds.
    #[error("{0}")]
    TooMany(String, u64),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl From<super::auth::Denied> for ApiError {
    fn from(d: super::auth::Denied) -> Self {
        ApiError::Denied(d)
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unprocessable(_) | ApiError::Manifest(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Denied(d) => d.status,
            ApiError::TooMany(..) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => ApiError::NotFound(format!("job {id} not found")),
            StoreError::Conflict(m) => ApiError::Conflict(m),
            other => ApiError::Internal(other.into()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Denied(d) = self {
            return d.into_response();
        }
        if let ApiError::Internal(e) = &self {
            tracing::error!(error = ?e, "internal error");
        }
        let mut body = json!({"error": self.to_string(), "status": status.as_u16()});
        if let ApiError::Manifest(m) = &self {
            body["errors"] = json!(m.0);
        }
        let mut resp = (status, Json(body)).into_response();
        if let ApiError::TooMany(_, secs) = &self {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, (*secs).into());
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
