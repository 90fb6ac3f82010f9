//! The REST edge described in OpenAPI 3.1, generated from the handlers'
//! own annotations and types (utoipa): served at `/openapi.json`, rendered
//! at `/docs`, linted (Redocly) and fuzzed against the live edge
//! (Schemathesis) by the test command. `gateway-svc openapi` prints it.

use super::{account, jobs, tus, upload, web, webhooks};
use std::sync::OnceLock;
use utoipa::{
    Modify, OpenApi, ToSchema,
    openapi::security::{Http, HttpAuthScheme, SecurityScheme},
};

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "mp3converter",
        description = "Convert videos to MP3: log in, upload a video, hear when its MP3 is ready, download it. Errors are always `Error` JSON; the same operations exist over gRPC (mp3converter.media.v1.MediaService, mp3converter.webhooks.v1.WebhookService).",
        license(name = "MIT", identifier = "MIT"),
    ),
    paths(
        super::login,
        account::logout,
        account::change_password,
        account::disable_user,
        account::enable_user,
        upload::upload,
        tus::discover,
        tus::discover_one,
        tus::create,
        tus::offset,
        tus::append,
        tus::terminate,
        jobs::list,
        jobs::get,
        jobs::delete,
        jobs::events,
        jobs::download,
        webhooks::create,
        webhooks::list,
        webhooks::get,
        webhooks::delete,
        webhooks::test,
        webhooks::deliveries,
        super::limits,
        super::healthz,
        super::readyz,
        openapi_json,
        web::index,
        web::reference,
        web::asset,
    ),
    // Named by header parameters only, which utoipa does not collect.
    components(schemas(tus::TusVersion)),
    modifiers(&Security),
    tags(
        (name = "account", description = "Logging in and out, the password"),
        (name = "jobs", description = "Uploading videos, following their conversion, downloading MP3s"),
        (name = "uploads", description = "Resumable uploads over tus 1.0.0 (creation, termination, expiration, checksum sha256): create with `POST /uploads`, send with `PATCH` from the offset `HEAD` gives, after any drop; the job (same id) is queued when the last byte is stored. Any tus client (tus-js-client, Uppy, tuspy) works with a bearer token header"),
        (name = "webhooks", description = "Callbacks instead of polling: signed Standard Webhooks messages (`webhook-id`, `webhook-timestamp`, `webhook-signature`: `v1,` and the base64 HMAC-SHA256 of `id.timestamp.body` under the endpoint's secret) POSTed to the caller's endpoints for every job outcome, at least once"),
        (name = "admin", description = "Admins only"),
        (name = "service", description = "Limits, health, this description"),
        (name = "web", description = "The web app"),
    )
)]
pub(crate) struct ApiDoc;

/// The security schemes: HTTP Basic for `/login`, a JWT bearer elsewhere.
#[derive(Debug)]
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                utoipa::openapi::security::HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("The token `POST /login` answers"))
                    .build(),
            ),
        );
    }
}

/// Bytes of any kind (a file).
#[derive(Debug, ToSchema)]
#[schema(value_type = String, format = Binary)]
pub(crate) struct Binary(#[allow(dead_code)] Vec<u8>);

/// The document, as JSON (built once).
pub(crate) fn json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc =
            serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes");
        // What utoipa's derive cannot say of the upload form (a doc-only
        // type): a bitrate or a quality, not both; no other fields.
        if let Some(form) = doc.pointer_mut("/components/schemas/UploadForm")
            && let Some(form) = form.as_object_mut()
        {
            form.insert(
                "not".into(),
                serde_json::json!({
                    "properties": { "bitrate": {}, "quality": {} },
                    "required": ["bitrate", "quality"],
                }),
            );
            form.insert("additionalProperties".into(), false.into());
        }
        serde_json::to_string_pretty(&doc).expect("the OpenAPI document serializes")
    })
}

/// This description.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "service",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object))
)]
pub(crate) async fn openapi_json() -> impl axum::response::IntoResponse {
    ([(http::header::CONTENT_TYPE, "application/json")], json())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_with_its_security_schemes() {
        let doc: serde_json::Value = serde_json::from_str(json()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes["bearer"]["scheme"], "bearer");
        assert_eq!(schemes["basic"]["scheme"], "basic");
        assert_eq!(
            doc["components"]["schemas"]["UploadForm"]["not"]["required"],
            serde_json::json!(["bitrate", "quality"])
        );
        // Every operation says what it answers, errors included.
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                assert!(
                    op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                    "{method} {path}"
                );
            }
        }
    }
}
