//! Extractors whose rejections are the app's problem documents: 401 for a
//! missing or bad token, 400 naming the field for bad input, 413 and 415 for
//! bodies that are too large or not JSON. Every body, query value and path
//! parameter is checked here for control characters (PostgreSQL refuses a
//! NUL in text, and none belongs in a name, an email or a code), so no
//! handler sees one.

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, OptionalFromRequest, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::AppState;
use crate::auth::Caller;
use crate::domain::user::Role;
use crate::error::AppError;
use crate::idempotency::IdempotencyKey;
use crate::storage::users;

/// A JSON body: an object (serde would read a struct from an array too),
/// its text free of control characters. It is parsed to a
/// `serde_json::Value` first and then to `T`, so a type error names the
/// field (`amount: invalid type: floating point…`). `Json<Value>` keeps the
/// raw body, e.g. to fingerprint it.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = AppError;

    async fn from_request(request: Request, state: &S) -> Result<Self, AppError> {
        Self::from_value(json_value(request, state).await?)
    }
}

impl<T: DeserializeOwned> Json<T> {
    fn from_value(value: Value) -> Result<Self, AppError> {
        if !value.is_object() {
            return Err(AppError::Validation("body: must be a JSON object".into()));
        }
        check_text(&value, &mut String::new())?;
        decode(&value).map(Json)
    }
}

async fn json_value<S: Send + Sync>(request: Request, state: &S) -> Result<Value, AppError> {
    let axum::Json(value) =
        <axum::Json<Value> as FromRequest<S>>::from_request(request, state).await.map_err(json_rejection)?;
    Ok(value)
}

/// A body that may be left out: none at all (no content type, no bytes),
/// or JSON `null`, is `None`; anything else must be a JSON object as above.
impl<T: DeserializeOwned, S: Send + Sync> OptionalFromRequest<S> for Json<T> {
    type Rejection = AppError;

    async fn from_request(request: Request, state: &S) -> Result<Option<Self>, AppError> {
        if request.headers().contains_key(header::CONTENT_TYPE) {
            return match json_value(request, state).await? {
                Value::Null => Ok(None),
                value => Self::from_value(value).map(Some),
            };
        }
        let body = Bytes::from_request(request, state).await.map_err(|_| AppError::PayloadTooLarge)?;
        if body.is_empty() { Ok(None) } else { Err(AppError::UnsupportedMediaType) }
    }
}

/// Refuses a control character in any string value, naming where it is;
/// `path` is where `value` sits. Keys are not checked: an unknown one is
/// ignored, and a known one has none.
fn check_text(value: &Value, path: &mut String) -> Result<(), AppError> {
    match value {
        Value::String(text) => no_control_characters(if path.is_empty() { "body" } else { path }, text),
        Value::Array(items) => items.iter().enumerate().try_for_each(|(i, item)| {
            let end = path.len();
            path.push_str(&format!("[{i}]"));
            let checked = check_text(item, path);
            path.truncate(end);
            checked
        }),
        Value::Object(fields) => fields.iter().try_for_each(|(key, item)| {
            let end = path.len();
            if end > 0 {
                path.push('.');
            }
            path.push_str(key);
            let checked = check_text(item, path);
            path.truncate(end);
            checked
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
}

/// 400 naming `field` if `text` holds NUL or another control character (a
/// field name that holds one is not repeated in the answer).
pub fn no_control_characters(field: &str, text: &str) -> Result<(), AppError> {
    let control = |text: &str| text.chars().any(char::is_control);
    if control(text) || control(field) {
        let field = if control(field) { "a field name" } else { field };
        return Err(AppError::Validation(format!("{field}: must not contain control characters")));
    }
    Ok(())
}

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Reads `T` out of a JSON value, naming the field that does not fit.
pub fn decode<T: DeserializeOwned>(value: &Value) -> Result<T, AppError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let message = error.inner().to_string();
        // serde reports a missing field at its parent: name the field itself.
        if let Some(missing) = message.strip_prefix("missing field `").and_then(|rest| rest.strip_suffix('`')) {
            let field = if path == "." { missing.to_owned() } else { format!("{path}.{missing}") };
            return AppError::Validation(format!("{field}: is required"));
        }
        let field = if path == "." { "body".to_owned() } else { path };
        AppError::Validation(format!("{field}: {message}"))
    })
}

fn json_rejection(rejection: JsonRejection) -> AppError {
    match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => AppError::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => AppError::UnsupportedMediaType,
        _ => AppError::Validation(format!("body: {}", rejection.body_text())),
    }
}

/// The single id of a path such as `/api/users/{userId}/points`: a positive
/// integer, else 400 naming the parameter.
pub struct PathId(pub i64);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        let (name, value) = single_path_param(parts, state).await?;
        value
            .parse::<i64>()
            .ok()
            .filter(|id| *id > 0)
            .map(PathId)
            .ok_or_else(|| AppError::Validation(format!("{name}: must be a positive integer")))
    }
}

/// The single text parameter of a path such as `/api/coupons/status/{couponType}`.
pub struct PathText(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathText {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        let (name, value) = single_path_param(parts, state).await?;
        no_control_characters(&name, &value)?;
        Ok(PathText(value))
    }
}

/// The name and value of a route's one path parameter.
async fn single_path_param<S: Send + Sync>(parts: &mut Parts, state: &S) -> Result<(String, String), AppError> {
    let params = RawPathParams::from_request_parts(parts, state)
        .await
        .map_err(|rejection| AppError::Validation(rejection.body_text()))?;
    let (name, value) = params
        .iter()
        .next()
        .ok_or_else(|| AppError::internal(anyhow::anyhow!("a path extractor on a route without parameters")))?;
    Ok((name.to_owned(), value.to_owned()))
}

/// Query parameters, with errors naming the parameter.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AppError> {
        let mut query = std::borrow::Cow::Borrowed(parts.uri.query().unwrap_or_default());
        let mut any_empty = false;
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            no_control_characters(&name, &value)?;
            any_empty |= value.is_empty();
        }
        // An empty value is the parameter left out (`?category=&limit=`, as
        // forms send them): only the pairs that have one are read.
        if any_empty {
            let given = form_urlencoded::parse(query.as_bytes()).filter(|(_, value)| !value.is_empty());
            query = form_urlencoded::Serializer::new(String::new()).extend_pairs(given).finish().into();
        }
        let deserializer = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer)
            .map(Query)
            .map_err(|error| AppError::Validation(format!("{}: {}", error.path(), error.inner())))
    }
}

/// The caller proven by `Authorization: Bearer <accessToken>`.
impl FromRequestParts<AppState> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let header =
            parts.headers.get(header::AUTHORIZATION).ok_or(AppError::Unauthenticated("an access token is required"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or(AppError::Unauthenticated("the Authorization header must be `Bearer <accessToken>`"))?;
        let caller =
            state.tokens.verify(token).ok_or(AppError::Unauthenticated("the access token is invalid or expired"))?;
        if !caller.is_admin() {
            return Ok(caller);
        }
        // Admin rights are the account's now, not the token's: a demoted
        // admin acts as a user, a deleted one not at all. Only admin tokens
        // pay this read; a customer's token claims nothing to take back.
        let role = users::role(&mut *state.db.read().await?, caller.user_id).await?;
        let role = role.ok_or(AppError::Unauthenticated("the account no longer exists"))?;
        Ok(Caller { role: Role::from_stored(&role), ..caller })
    }
}

impl Caller {
    /// A path `userId` must be the caller's own, unless the caller is an admin.
    pub fn may_act_for(&self, user_id: i64) -> Result<(), AppError> {
        if self.user_id == user_id || self.is_admin() {
            Ok(())
        } else {
            Err(AppError::Forbidden("you may only act on your own account"))
        }
    }

    /// A body's `userId` (kept for older clients) may be omitted; if given it
    /// must be the caller's own.
    pub fn check_body_user(&self, user_id: Option<i64>) -> Result<(), AppError> {
        match user_id {
            Some(id) if id != self.user_id => Err(AppError::Forbidden("userId must be your own id")),
            _ => Ok(()),
        }
    }

    pub fn require_admin(&self) -> Result<(), AppError> {
        if self.is_admin() { Ok(()) } else { Err(AppError::Forbidden("this needs the admin role")) }
    }
}

/// What an `Idempotency-Key` request needs besides its body: the key (if
/// sent, and valid) and the method and path it is bound to.
pub struct IdempotencyHeader {
    pub key: Option<IdempotencyKey>,
    pub method: axum::http::Method,
    pub path: String,
    /// How long what the operation holds outside PostgreSQL (a gate's
    /// units) may outlive a request that died: its key is not taken over
    /// sooner, so that a retry never meets the dead request's holds.
    pub holds_settle_within: std::time::Duration,
}

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyHeader {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AppError> {
        let key =
            parts.headers.get("idempotency-key").map(|value| IdempotencyKey::parse(value.as_bytes())).transpose()?;
        Ok(Self {
            key,
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            holds_settle_within: std::time::Duration::ZERO,
        })
    }
}
