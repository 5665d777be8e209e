//! The portal's static files, vendored in `src/web/static` and compiled into the binary. Each is
//! served under `/static/<stem>.<hash>.<ext>`, where `<hash>` is the start of the file's SHA-256, so
//! its URL changes whenever its bytes do and browsers may cache it for a year.

use std::sync::LazyLock;

use actix_web::{HttpResponse, web};

/// One static file.
pub struct Asset {
    /// The content-hashed path it is served under, e.g. `/static/portal.1a2b….css`.
    pub path: String,
    content_type: &'static str,
    bytes: &'static [u8],
}

fn hashed(stem: &str, ext: &str, content_type: &'static str, bytes: &'static [u8]) -> Asset {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let short = hex::encode(digest.as_ref().get(..10).unwrap_or_default());
    Asset {
        path: format!("/static/{stem}.{short}.{ext}"),
        content_type,
        bytes,
    }
}

/// The stylesheet.
pub static CSS: LazyLock<Asset> = LazyLock::new(|| {
    hashed(
        "portal",
        "css",
        "text/css; charset=utf-8",
        include_bytes!("static/portal.css"),
    )
});

/// The WebAuthn ceremony script.
pub static JS: LazyLock<Asset> = LazyLock::new(|| {
    hashed(
        "webauthn",
        "js",
        "text/javascript; charset=utf-8",
        include_bytes!("static/webauthn.js"),
    )
});

/// The dispatcher console's live grant state (server-sent events).
pub static LIVE_JS: LazyLock<Asset> = LazyLock::new(|| {
    hashed(
        "live",
        "js",
        "text/javascript; charset=utf-8",
        include_bytes!("static/live.js"),
    )
});

/// The in-browser verifier of audit exports (`/verify`).
pub static VERIFY_JS: LazyLock<Asset> = LazyLock::new(|| {
    hashed(
        "verify",
        "js",
        "text/javascript; charset=utf-8",
        include_bytes!("static/verify.js"),
    )
});

/// The icon (also what spares the browser its `/favicon.ico` request).
pub static ICON: LazyLock<Asset> = LazyLock::new(|| {
    hashed(
        "icon",
        "svg",
        "image/svg+xml",
        include_bytes!("static/icon.svg"),
    )
});

fn all() -> [&'static Asset; 5] {
    [&CSS, &JS, &ICON, &LIVE_JS, &VERIFY_JS]
}

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/static/{file}", web::get().to(serve));
}

async fn serve(file: web::Path<String>) -> Result<HttpResponse, super::WebError> {
    let wanted = format!("/static/{file}");
    let asset = all()
        .into_iter()
        .find(|a| a.path == wanted)
        .ok_or(super::WebError::not_found())?;
    Ok(HttpResponse::Ok()
        .content_type(asset.content_type)
        .insert_header(("Cache-Control", "public, max-age=31536000, immutable"))
        .body(asset.bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_carry_the_content_hash() {
        for asset in all() {
            let digest = hex::encode(ring::digest::digest(&ring::digest::SHA256, asset.bytes));
            let short = digest.get(..20).unwrap_or_default();
            assert!(asset.path.contains(short), "{}", asset.path);
        }
        assert_ne!(CSS.path, JS.path);
    }
}
