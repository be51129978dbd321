//! The OpenAPI document's frame; the paths come from the handlers'
//! `#[utoipa::path]` attributes as the router registers them.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

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
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}
