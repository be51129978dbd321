//! The OpenAPI document's frame; the paths come from the handlers'
//! `#[utoipa::path]` attributes as the router registers them.

use utoipa::openapi::header::Header;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::schema::{ArrayItems, ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Content, RefOr, Response};
use utoipa::{Modify, OpenApi, ToSchema};

use super::error::Problem;
use crate::error::CODES;

/// Older paths kept for existing clients: (older path, the path it serves).
/// The router routes them to the same handlers.
pub const ALIASES: [(&str, &str); 2] =
    [("/api/payments/process", "/api/payments"), ("/api/coupons/user/{userId}", "/api/users/{userId}/coupons")];

#[derive(OpenApi)]
#[openapi(
    info(
        title = "shop",
        description = "An e-commerce backend that stays correct under contention. \
            Errors are application/problem+json (RFC 9457) with a machine-readable `code`. \
            State-changing POSTs honour an `Idempotency-Key` header.",
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Accounts and tokens"),
        (name = "points", description = "Prepaid point balance"),
        (name = "products", description = "Catalogue"),
        (name = "coupons", description = "Limited first-come coupon campaigns"),
        (name = "orders", description = "Orders and their life cycle"),
        (name = "payments", description = "Paying orders from points"),
        (name = "admin", description = "Admin-only operations"),
        (name = "health", description = "Probes and metrics"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        // The crate has no license to declare; utoipa would print an empty one.
        openapi.info.license = None;
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// Every error answer is `application/problem+json`, every route that
/// needs a token can answer 401, every route with a JSON body 413 and 415,
/// and every route but the probes 503 when PostgreSQL or Redis fails: said
/// once here rather than per handler.
/// Runs on the finished document, after the router has added the paths.
pub fn document_problem_responses(openapi: &mut utoipa::openapi::OpenApi) {
    for item in openapi.paths.paths.values_mut() {
        let operations = [&mut item.get, &mut item.post, &mut item.put, &mut item.patch, &mut item.delete];
        for operation in operations.into_iter().flatten() {
            document_problems(operation);
            document_headers(operation);
        }
    }
    document_codes(openapi);
    document_text(openapi);
    document_aliases(openapi);
}

/// No text may hold a control character (the extractors refuse one with
/// 400); an `Idempotency-Key` is 1–255 printable ASCII characters.
/// Said of every string in the document rather than field by field.
fn document_text(openapi: &mut utoipa::openapi::OpenApi) {
    for item in openapi.paths.paths.values_mut() {
        let operations = [&mut item.get, &mut item.post, &mut item.put, &mut item.patch, &mut item.delete];
        for operation in operations.into_iter().flatten() {
            for parameter in operation.parameters.iter_mut().flatten() {
                let RefOr::T(parameter) = parameter else { continue };
                let Some(RefOr::T(schema)) = parameter.schema.as_mut() else { continue };
                if parameter.name == "Idempotency-Key" {
                    if let Schema::Object(key) = schema {
                        key.pattern = Some(IDEMPOTENCY_KEY_PATTERN.into());
                        key.min_length = Some(1);
                        key.max_length = Some(255);
                    }
                } else {
                    forbid_control_characters(schema);
                }
            }
        }
    }
    // The request bodies' schemas, and the schemas they refer to: answers
    // keep whatever text was stored before this rule.
    let mut names: Vec<String> = openapi
        .paths
        .paths
        .values()
        .flat_map(|item| [&item.get, &item.post, &item.put, &item.patch, &item.delete])
        .flatten()
        .filter_map(|operation| match &operation.request_body {
            Some(RefOr::T(body)) => Some(body),
            _ => None,
        })
        .flat_map(|body| body.content.values())
        .filter_map(|content| match content {
            RefOr::T(content) => content.schema.as_ref(),
            RefOr::Ref(_) => None,
        })
        .filter_map(referenced)
        .collect();
    let Some(components) = openapi.components.as_mut() else { return };
    let mut done = std::collections::HashSet::new();
    while let Some(name) = names.pop() {
        if !done.insert(name.clone()) {
            continue;
        }
        if let Some(RefOr::T(schema)) = components.schemas.get_mut(&name) {
            forbid_control_characters(schema);
            if let Schema::Object(object) = schema {
                names.extend(object.properties.values().filter_map(referenced));
                let items = object.properties.values().filter_map(|property| match property {
                    RefOr::T(Schema::Array(array)) => match &array.items {
                        ArrayItems::RefOrSchema(items) => referenced(items),
                        ArrayItems::False => None,
                    },
                    _ => None,
                });
                names.extend(items.collect::<Vec<_>>());
            }
        }
    }
}

/// The component a `$ref` names.
fn referenced(schema: &RefOr<Schema>) -> Option<String> {
    match schema {
        RefOr::Ref(reference) => reference.ref_location.rsplit('/').next().map(str::to_owned),
        RefOr::T(_) => None,
    }
}

const IDEMPOTENCY_KEY_PATTERN: &str = "^[\\x20-\\x7E]{1,255}$";
const NO_CONTROL_CHARACTERS: &str = "^[^\\x00-\\x1F\\x7F-\\x9F]*$";

/// Gives every free-text string in `schema` (no enum, no format, no pattern
/// of its own) the pattern that excludes control characters.
fn forbid_control_characters(schema: &mut Schema) {
    match schema {
        Schema::Object(object) => {
            let string = matches!(&object.schema_type, SchemaType::Type(Type::String))
                || matches!(&object.schema_type, SchemaType::Array(types) if types.contains(&Type::String));
            if string && object.enum_values.is_none() && object.format.is_none() && object.pattern.is_none() {
                object.pattern = Some(NO_CONTROL_CHARACTERS.into());
            }
            for property in object.properties.values_mut() {
                if let RefOr::T(property) = property {
                    forbid_control_characters(property);
                }
            }
        }
        Schema::Array(array) => {
            if let ArrayItems::RefOrSchema(items) = &mut array.items
                && let RefOr::T(items) = items.as_mut()
            {
                forbid_control_characters(items);
            }
        }
        Schema::OneOf(one_of) => one_of.items.iter_mut().for_each(|item| {
            if let RefOr::T(item) = item {
                forbid_control_characters(item);
            }
        }),
        Schema::AllOf(all_of) => all_of.items.iter_mut().for_each(|item| {
            if let RefOr::T(item) = item {
                forbid_control_characters(item);
            }
        }),
        _ => {}
    }
}

/// The problem document's `code` is one of [`CODES`].
fn document_codes(openapi: &mut utoipa::openapi::OpenApi) {
    let Some(components) = openapi.components.as_mut() else { return };
    if let Some(RefOr::T(Schema::Object(problem))) = components.schemas.get_mut(Problem::name().as_ref())
        && let Some(RefOr::T(Schema::Object(code))) = problem.properties.get_mut("code")
    {
        code.enum_values = Some(CODES.iter().map(|code| (*code).into()).collect());
    }
}

/// Every answer carries `X-Request-Id`; a 409 or 503 may carry
/// `Retry-After`; the success of a request with an Idempotency-Key may be a
/// replay, marked `Idempotent-Replayed`.
fn document_headers(operation: &mut Operation) {
    let idempotent = operation
        .parameters
        .iter()
        .flatten()
        .any(|parameter| matches!(parameter, RefOr::T(p) if p.name == "Idempotency-Key" && p.parameter_in == ParameterIn::Header));
    for (status, response) in operation.responses.responses.iter_mut() {
        let RefOr::T(response) = response else {
            continue;
        };
        let headers = &mut response.headers;
        headers.insert(
            "X-Request-Id".into(),
            header(Type::String, "The request's id: the client's, if it sent a valid one"),
        );
        if status == "409" || status == "503" {
            headers.insert(
                "Retry-After".into(),
                header(Type::Integer, "Seconds to wait before retrying a transient answer"),
            );
        }
        if idempotent && status.starts_with('2') {
            headers.insert(
                "Idempotent-Replayed".into(),
                header(Type::String, "`true` when this is the stored answer of an earlier request with the same key"),
            );
        }
    }
}

fn header(kind: Type, description: &str) -> RefOr<Header> {
    let mut header = Header::new(ObjectBuilder::new().schema_type(kind));
    header.description = Some(description.into());
    RefOr::T(header)
}

/// The older paths, each with the operations of the path it serves (under
/// operation ids of their own).
fn document_aliases(openapi: &mut utoipa::openapi::OpenApi) {
    for (alias, path) in ALIASES {
        let Some(mut item) = openapi.paths.paths.get(path).cloned() else { continue };
        let operations = [&mut item.get, &mut item.post, &mut item.put, &mut item.patch, &mut item.delete];
        for operation in operations.into_iter().flatten() {
            operation.operation_id = operation.operation_id.as_ref().map(|id| format!("{id}AtOlderPath"));
            operation.summary = Some(format!("Older path of {path}, kept for existing clients."));
        }
        openapi.paths.paths.insert(alias.into(), item);
    }
}

fn document_problems(operation: &mut Operation) {
    let probe = operation.tags.iter().flatten().any(|tag| tag == "health");
    let signed_in = operation.security.as_ref().is_some_and(|security| !security.is_empty());
    let responses = &mut operation.responses.responses;
    if signed_in {
        responses
            .entry("401".into())
            .or_insert_with(|| RefOr::T(Response::new("UNAUTHENTICATED: no valid access token")));
    }
    if !probe {
        responses.entry("503".into()).or_insert_with(|| {
            let mut unavailable = Response::new(
                "SERVICE_UNAVAILABLE, with Retry-After: PostgreSQL or Redis failed. Nothing was changed, or — \
                 when the database did not confirm a commit in time — the change may have been saved, and a \
                 retry with the same Idempotency-Key replays its answer.",
            );
            let problem = RefOr::T(Content::new(Some(problem_schema())));
            unavailable.content.insert("application/problem+json".into(), problem);
            RefOr::T(unavailable)
        });
    }
    if operation.request_body.is_some() {
        for (status, description) in [
            ("413", "PAYLOAD_TOO_LARGE: the body is over 64 KiB"),
            ("415", "UNSUPPORTED_MEDIA_TYPE: the body is not application/json"),
        ] {
            responses.entry(status.into()).or_insert_with(|| RefOr::T(Response::new(description)));
        }
    }
    for (status, response) in responses.iter_mut() {
        let RefOr::T(response) = response else {
            continue;
        };
        if !(status.starts_with('4') || status.starts_with('5')) || status == "503" {
            continue;
        }
        let content = response
            .content
            .shift_remove("application/json")
            .unwrap_or_else(|| RefOr::T(Content::new(Some(problem_schema()))));
        response.content.insert("application/problem+json".into(), content);
    }
}

fn problem_schema() -> RefOr<utoipa::openapi::Schema> {
    RefOr::Ref(utoipa::openapi::Ref::from_schema_name(Problem::name()))
}
