//! Images (`vmm` `content/images`): v4 has no endpoint that takes an
//! image's bytes, so Prism Central pulls the converted image from vmscan
//! (a `UrlSource` with the job's pull key) and checks it against its
//! sha256. A finished create task does not mean the image is usable: it is
//! ready once it reports its size (packer `CreateImageURL` waits the same way).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::client::odata_str;
use super::tasks::entity_of;
use super::{V4Client, V4Error};

pub const IMAGES: &str = "/api/vmm/v4.0/content/images";
/// The `rel` of an image in a task's `entitiesAffected` (terraform `utils/constants.go`).
const IMAGE_REL: &str = "vmm:content:image";

/// The body of `POST content/images` (`vmm.v4.content.Image`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewImage<'a> {
    pub name: &'a str,
    #[serde(rename = "type")]
    pub kind: ImageType,
    pub description: String,
    pub source: UrlSource<'a>,
    pub checksum: Sha256Checksum<'a>,
    /// The Prism Element clusters that hold it (there is no
    /// `initialClusterLocations` in v4).
    pub cluster_location_ext_ids: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub category_ext_ids: Vec<String>,
}

#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ImageType {
    DiskImage,
    IsoImage,
}

/// oneOf members are told apart by `$objectType` (never `$…ItemDiscriminator`,
/// which packer found the API rejects).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UrlSource<'a> {
    #[serde(rename = "$objectType")]
    object_type: &'static str,
    url: &'a str,
    should_allow_insecure_url: bool,
}

impl<'a> UrlSource<'a> {
    pub fn new(url: &'a str) -> UrlSource<'a> {
        UrlSource {
            object_type: "vmm.v4.content.UrlSource",
            url,
            should_allow_insecure_url: false,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sha256Checksum<'a> {
    #[serde(rename = "$objectType")]
    object_type: &'static str,
    hex_digest: &'a str,
}

impl<'a> Sha256Checksum<'a> {
    pub fn new(hex_digest: &'a str) -> Sha256Checksum<'a> {
        Sha256Checksum {
            object_type: "vmm.v4.content.ImageSha256Checksum",
            hex_digest,
        }
    }
}

/// An image as Prism Central reports it: the fields vmscan reads.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    pub ext_id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// The disk Prism made of it (a qcow2's virtual size); absent or 0
    /// until the image is usable.
    #[serde(default)]
    pub size_bytes: Option<u64>,
}

/// The images called exactly `name`.
pub async fn named(client: &V4Client, name: &str) -> Result<Vec<Image>, V4Error> {
    let filter = format!("name eq {}", odata_str(name));
    let all: Vec<Image> = client.list_as(IMAGES, Some(&filter)).await?;
    Ok(all.into_iter().filter(|i| i.name == name).collect())
}

/// Creates the image and waits for its task (`upload_limit`, reporting its
/// percentage), then until it reports its size (`ready_limit`). Returns it
/// with that size.
pub async fn create(
    client: &V4Client,
    image: &NewImage<'_>,
    upload_limit: Duration,
    ready_limit: Duration,
    on_percent: &(dyn Fn(u64) + Send + Sync),
) -> Result<(Image, u64), V4Error> {
    let task_id = client.create(IMAGES, image).await?;
    let task = client.wait_task(&task_id, upload_limit, on_percent).await?;
    let ext_id = match entity_of(&task, IMAGE_REL) {
        Some(id) => id,
        None => match named(client, image.name).await?.as_slice() {
            [one] => one.ext_id.clone(),
            _ => {
                return Err(V4Error::Protocol(format!(
                    "task {task_id} succeeded but names no {IMAGE_REL} and no single image is named {:?}",
                    image.name
                )))
            }
        },
    };
    let path = format!("{IMAGES}/{ext_id}");
    let started = Instant::now();
    let poll = Duration::from_millis(client.cfg().task_poll_ms.max(10));
    loop {
        let (img, _) = client.get_as::<Image>(&path).await?;
        if let Some(n) = img.size_bytes.filter(|n| *n > 0) {
            return Ok((img, n));
        }
        if started.elapsed() >= ready_limit {
            return Err(V4Error::Protocol(format!(
                "image {ext_id}: its create task succeeded but it reports no size after {} s (not usable yet)",
                ready_limit.as_secs()
            )));
        }
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_create_body_is_the_documented_shape() {
        let body = NewImage {
            name: "vmscan-img-x",
            kind: ImageType::DiskImage,
            description: "vmscan job x".into(),
            source: UrlSource::new("http://vmscan:8080/api/v1/jobs/x/image?key=k"),
            checksum: Sha256Checksum::new("ab"),
            cluster_location_ext_ids: vec!["pe".into()],
            category_ext_ids: vec![],
        };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            json!({
                "name": "vmscan-img-x", "type": "DISK_IMAGE", "description": "vmscan job x",
                "source": {"$objectType": "vmm.v4.content.UrlSource",
                           "url": "http://vmscan:8080/api/v1/jobs/x/image?key=k",
                           "shouldAllowInsecureUrl": false},
                "checksum": {"$objectType": "vmm.v4.content.ImageSha256Checksum", "hexDigest": "ab"},
                "clusterLocationExtIds": ["pe"],
            })
        );
        // A recorded list item (nutanix.dev eTag article): sizeBytes is the virtual size.
        let img: Image = serde_json::from_value(json!({"$objectType": "vmm.v4.content.Image",
            "extId": "e", "name": "CentOS-7-x86_64-GenericCloud-2211.qcow2", "sizeBytes": 8589934592u64}))
        .unwrap();
        assert_eq!(img.size_bytes, Some(8 << 30));
    }
}
