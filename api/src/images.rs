//! Profile images: `POST /api/profile/image` (multipart field `image`) and serving them back at
//! their `imageUrl`. What is accepted (JPEG, PNG or GIF judged by the bytes, at most 5 MB and
//! 2048x2048) is decided in [`confab_application::accounts::set_image`].

use crate::auth::AuthUser;
use crate::error::ErrorBody;
use crate::extract::ApiPath;
use crate::resources::users::{ImageForm, ProfileImage};
use crate::{ApiError, AppState};
use axum::Json;
use axum::body::Body;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::Response;
use confab_application::accounts::{self, MAX_IMAGE_BYTES};
use uuid::Uuid;

/// The body limit of the upload route: the image and the multipart framing around it.
pub const MAX_BODY_BYTES: usize = MAX_IMAGE_BYTES + 64 * 1024;

/// `POST /api/profile/image` → `{imageUrl, updatedAt}`.
#[utoipa::path(post, path = "/api/profile/image", tag = "profile", security(("bearer" = []), ("cookie" = [])),
    request_body(content = ImageForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "The new image", body = ProfileImage),
        (status = 413, description = "Over 5 MB", body = ErrorBody),
        (status = 415, description = "Not a JPEG, PNG or GIF", body = ErrorBody),
    ))]
pub(crate) async fn upload(
    State(state): State<AppState>,
    auth: AuthUser,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<ProfileImage>, ApiError> {
    let mut multipart = multipart.map_err(|r| {
        ApiError::UnsupportedMediaType(format!(
            "send multipart/form-data with a boundary and a file field `image`: {}",
            r.body_text()
        ))
    })?;
    let too_large =
        || ApiError::PayloadTooLarge(format!("the image must be at most {MAX_IMAGE_BYTES} bytes"));
    let bad_form = |e: axum::extract::multipart::MultipartError| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            ApiError::field(
                "image",
                format!("unreadable multipart body: {}", e.body_text()),
            )
        }
    };
    let mut image: Option<Vec<u8>> = None;
    while let Some(mut field) = multipart.next_field().await.map_err(bad_form)? {
        if field.name() != Some("image") || image.is_some() {
            return Err(ApiError::field(
                "image",
                "the form holds one file field, `image`, and nothing else",
            ));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(bad_form)? {
            if bytes.len() + chunk.len() > MAX_IMAGE_BYTES {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        image = Some(bytes);
    }
    let bytes =
        image.ok_or_else(|| ApiError::field("image", "a file field named `image` is required"))?;
    let set = accounts::set_image(&state.app, &auth, bytes.into()).await?;
    Ok(Json(ProfileImage {
        image_url: set.image_url,
        updated_at: set.updated_at,
    }))
}

/// `GET /api/profile/image/{userId}/{file}`: the stored image, with its media type.
#[utoipa::path(get, path = "/api/profile/image/{userId}/{file}", tag = "profile",
    params(("userId" = Uuid, Path, description = "The image's owner"), ("file" = String, Path, description = "`{uuid}.jpg`, `.png` or `.gif`")),
    responses(
        (status = 200, description = "The image", content(
            (Vec<u8> = "image/jpeg"), (Vec<u8> = "image/png"), (Vec<u8> = "image/gif"))),
        (status = 404, description = "No such image", body = ErrorBody),
    ))]
pub(crate) async fn serve(
    State(state): State<AppState>,
    ApiPath((user_id, file)): ApiPath<(Uuid, String)>,
) -> Result<Response, ApiError> {
    let (bytes, media_type) = accounts::image(&state.app, user_id, &file).await?;
    Response::builder()
        .header(CONTENT_TYPE, media_type)
        .header(CACHE_CONTROL, "public, max-age=31536000, immutable")
        .header("x-content-type-options", "nosniff")
        .body(Body::from(bytes))
        .map_err(|e| ApiError::Internal(e.into()))
}
