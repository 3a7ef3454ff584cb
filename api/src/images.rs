//! Profile images: `POST /api/profile/image` (multipart field `image`) and serving them back at
//! their `imageUrl`.
//!
//! The type is judged by the file's own bytes (JPEG, PNG or GIF), never by the client's content
//! type; at most 5 MB and 2048x2048 pixels, the size read from the image header alone (nothing
//! is decoded). Files go to the object store under `profile-images/{userId}/{id}.{ext}`.

use crate::auth::{AuthUser, metadata, now};
use crate::extract::ApiPath;
use crate::openapi::ErrorBody;
use crate::{ApiError, AppState};
use axum::Json;
use axum::body::Body;
use axum::extract::{Multipart, State};
use axum::http::HeaderMap;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::Response;
use confab_domain::account::{Account, AccountCommand};
use confab_projections::accounts;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use serde_json::{Value, json};
use uuid::Uuid;

/// Largest image, in bytes.
pub const MAX_BYTES: usize = 5 * 1024 * 1024;
/// Largest width or height, in pixels.
pub const MAX_SIDE: usize = 2048;

/// The accepted formats: (extension, media type).
fn sniff(bytes: &[u8]) -> Option<(&'static str, &'static str)> {
    match imagesize::image_type(bytes).ok()? {
        imagesize::ImageType::Jpeg => Some(("jpg", "image/jpeg")),
        imagesize::ImageType::Png => Some(("png", "image/png")),
        imagesize::ImageType::Gif => Some(("gif", "image/gif")),
        _ => None,
    }
}

fn media_type(ext: &str) -> &'static str {
    match ext {
        "jpg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        _ => "application/octet-stream",
    }
}

/// `POST /api/profile/image` → `{imageUrl, updatedAt}`.
#[utoipa::path(post, path = "/api/profile/image", tag = "profile", security(("bearer" = []), ("cookie" = [])), request_body(content_type = "multipart/form-data", description = "Field `image`: JPEG, PNG or GIF, at most 5 MB and 2048x2048"), responses((status = 200, description = "{imageUrl, updatedAt}"), (status = 400, description = "Invalid input", body = ErrorBody), (status = 401, description = "Not signed in", body = ErrorBody), (status = 413, description = "Over 5 MB", body = ErrorBody), (status = 415, description = "Not a JPEG, PNG or GIF", body = ErrorBody)))]
pub(crate) async fn upload(
    State(state): State<AppState>,
    headers: HeaderMap,
    auth: AuthUser,
    mut multipart: Multipart,
) -> Result<Json<Value>, ApiError> {
    let bad_form = |e: axum::extract::multipart::MultipartError| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(format!("the image must be at most {MAX_BYTES} bytes"))
        } else {
            ApiError::field(
                "image",
                format!("unreadable multipart body: {}", e.body_text()),
            )
        }
    };
    let mut image: Option<Vec<u8>> = None;
    while let Some(mut field) = multipart.next_field().await.map_err(bad_form)? {
        if field.name() != Some("image") {
            continue;
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(bad_form)? {
            if bytes.len() + chunk.len() > MAX_BYTES {
                return Err(ApiError::PayloadTooLarge(format!(
                    "the image must be at most {MAX_BYTES} bytes"
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        image = Some(bytes);
        break;
    }
    let bytes =
        image.ok_or_else(|| ApiError::field("image", "a file field named `image` is required"))?;
    let (ext, _) = sniff(&bytes).ok_or_else(|| {
        ApiError::UnsupportedMediaType("the image must be a JPEG, PNG or GIF file".into())
    })?;
    let size = imagesize::blob_size(&bytes)
        .map_err(|_| ApiError::field("image", "the image header is unreadable"))?;
    if size.width > MAX_SIDE || size.height > MAX_SIDE || size.width == 0 || size.height == 0 {
        return Err(ApiError::field(
            "image",
            format!(
                "is {}x{} pixels; at most {MAX_SIDE}x{MAX_SIDE} allowed",
                size.width, size.height
            ),
        ));
    }
    let user_id = auth.user.id;
    let file = format!("{}.{ext}", Uuid::now_v7());
    let path = ObjectPath::from(format!("profile-images/{user_id}/{file}"));
    state
        .objects
        .put(&path, bytes.into())
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    let image_url = format!("/api/profile/image/{user_id}/{file}");
    let done = state
        .commands
        .execute::<Account>(
            &user_id,
            AccountCommand::ChangeImage {
                image_url: image_url.clone(),
                at: now(),
            },
            metadata(&headers, Some(user_id)),
        )
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("{e}")))?;
    state
        .visible(accounts::NAME, done.appended.map(|a| a.last_position))
        .await?;
    let user = accounts::user_by_id(&state.db, user_id)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .ok_or(ApiError::Unauthorized)?;
    Ok(Json(
        json!({ "imageUrl": image_url, "updatedAt": user.updated_at }),
    ))
}

/// `GET /api/profile/image/{userId}/{file}`: the stored image, with its media type.
#[utoipa::path(get, path = "/api/profile/image/{userId}/{file}", tag = "profile", params(("userId" = Uuid, Path), ("file" = String, Path)), responses((status = 200, description = "The image"), (status = 404, description = "Not found, or not the caller's", body = ErrorBody)))]
pub(crate) async fn serve(
    State(state): State<AppState>,
    ApiPath((user_id, file)): ApiPath<(Uuid, String)>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::NotFound("no such image".into());
    let (stem, ext) = file.rsplit_once('.').ok_or_else(not_found)?;
    if Uuid::parse_str(stem).is_err() || !matches!(ext, "jpg" | "png" | "gif") {
        return Err(not_found());
    }
    let path = ObjectPath::from(format!("profile-images/{user_id}/{stem}.{ext}"));
    let got = match state.objects.get(&path).await {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => return Err(not_found()),
        Err(e) => return Err(ApiError::Internal(e.into())),
    };
    let bytes = got
        .bytes()
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    Response::builder()
        .header(CONTENT_TYPE, media_type(ext))
        .header(CACHE_CONTROL, "public, max-age=31536000, immutable")
        .header("x-content-type-options", "nosniff")
        .body(Body::from(bytes))
        .map_err(|e| ApiError::Internal(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_judged_by_their_bytes() {
        assert_eq!(
            sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR").map(|s| s.0),
            Some("png")
        );
        assert_eq!(
            sniff(b"GIF89a\x01\0\x01\0\0\0\0;").map(|s| s.0),
            Some("gif")
        );
        assert_eq!(
            sniff(b"\xff\xd8\xff\xe0\0\x10JFIF\0\x01\x01").map(|s| s.0),
            Some("jpg")
        );
        assert_eq!(sniff(b"<svg xmlns='http://www.w3.org/2000/svg'/>"), None);
        assert_eq!(sniff(b"%PDF-1.7"), None);
    }
}
