//! What every page shares: the response helpers (HTML content type and the pages' CSP), the page
//! chrome the base layout shows, and the extractors that tell who is looking.

use std::future::Future;
use std::pin::Pin;

use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpRequest, HttpResponse, HttpResponseBuilder};
use askama::Template;
use deadpool_postgres::GenericClient;

use super::WebError;
use super::assets;
use crate::auth::Actor;
use crate::domain::Role;
use crate::http::AppState;
use crate::http::error::ApiError;

/// The Content-Security-Policy of every page: our own origin only, no inline script or style, no
/// plugins, no framing, forms post only to us.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
     object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// What the base layout needs: asset URLs and who is signed in.
pub struct Chrome {
    /// Stylesheet URL.
    pub css: &'static str,
    /// Script URL.
    pub js: &'static str,
    /// Icon URL.
    pub icon: &'static str,
    /// Display name of the signed-in user.
    pub user: Option<String>,
    /// Whether to show the homeowner's navigation.
    pub homeowner: bool,
    /// Whether to show the dispatcher's navigation.
    pub dispatcher: bool,
    /// The zone the page's times are in (the viewer's municipality's; UTC for visitors).
    pub zone: &'static str,
}

impl Chrome {
    /// For a visitor who is not signed in (and for error pages, which read nothing).
    pub fn anonymous() -> Self {
        Self {
            css: &assets::CSS.path,
            js: &assets::JS.path,
            icon: &assets::ICON.path,
            user: None,
            homeowner: false,
            dispatcher: false,
            zone: super::zone::name(),
        }
    }

    /// For `actor`, with their current display name.
    pub async fn of(client: &impl GenericClient, actor: &Actor) -> Result<Self, WebError> {
        let user = crate::store::people::user(client, actor.tenant, actor.user_id).await?;
        Ok(Self {
            user: Some(user.display_name),
            homeowner: actor.has(Role::Homeowner),
            dispatcher: actor.has(Role::Dispatcher),
            ..Self::anonymous()
        })
    }

    /// For a viewer who may or may not be signed in.
    pub async fn of_viewer(
        client: &impl GenericClient,
        viewer: Option<&Actor>,
    ) -> Result<Self, WebError> {
        match viewer {
            Some(actor) => Self::of(client, actor).await,
            None => Ok(Self::anonymous()),
        }
    }
}

/// A response builder for an HTML page with the pages' CSP.
pub fn html_response(status: StatusCode) -> HttpResponseBuilder {
    let mut response = HttpResponse::build(status);
    response
        .content_type("text/html; charset=utf-8")
        .insert_header(("Content-Security-Policy", CSP))
        // Not the API's `no-referrer`: under it a browser sends `Origin: null` with a form post,
        // and the Origin check (rightly) refuses it. `same-origin` still tells other sites nothing.
        .insert_header(("Referrer-Policy", "same-origin"));
    response
}

/// Renders `page` with `status`.
pub fn render(status: StatusCode, page: &impl Template) -> Result<HttpResponse, WebError> {
    Ok(html_response(status).body(page.render()?))
}

/// Renders `page` with 200.
pub fn ok(page: &impl Template) -> Result<HttpResponse, WebError> {
    render(StatusCode::OK, page)
}

/// 303 See Other: where a form post sends the browser next.
pub fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header(("Location", location))
        .finish()
}

/// A path on this site to go back to after signing in; anything else (another host, a
/// protocol-relative or backslash path) is refused so the parameter cannot redirect elsewhere.
pub fn local_path(next: &str) -> Option<&str> {
    let ok = next.starts_with('/')
        && !next.starts_with("//")
        && !next.contains('\\')
        && next.len() <= 500
        && !next.chars().any(char::is_control);
    ok.then_some(next)
}

/// `/sign-in?next=…` for a local path.
pub fn sign_in_path(next: &str) -> String {
    match local_path(next) {
        Some(next) if next != "/" => format!("/sign-in?next={}", percent_encode(next)),
        _ => "/sign-in".to_owned(),
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

type Extracted<T> = Pin<Box<dyn Future<Output = Result<T, WebError>>>>;

/// Times on this request's pages from now on in the viewer's municipality's zone.
async fn adopt_zone(state: Option<&AppState>, actor: &Actor) -> Result<(), WebError> {
    if let Some(state) = state {
        super::zone::adopt(&state.pool, actor.tenant).await?;
    }
    Ok(())
}

/// Whoever is looking: a signed-in user or nobody. A database failure is an error, not "nobody".
pub struct Viewer(pub Option<Actor>);

impl FromRequest for Viewer {
    type Error = WebError;
    type Future = Extracted<Self>;

    fn from_request(req: &HttpRequest, payload: &mut actix_web::dev::Payload) -> Self::Future {
        let actor = Actor::from_request(req, payload);
        let state = req.app_data::<actix_web::web::Data<AppState>>().cloned();
        Box::pin(async move {
            match actor.await {
                Ok(actor) => {
                    adopt_zone(state.as_ref().map(|s| s.get_ref()), &actor).await?;
                    Ok(Self(Some(actor)))
                }
                Err(ApiError::Unauthenticated) => Ok(Self(None)),
                Err(e) => Err(e.into()),
            }
        })
    }
}

/// A signed-in user; anyone else is sent to the sign-in page and back here afterwards.
pub struct SignedIn(pub Actor);

impl FromRequest for SignedIn {
    type Error = WebError;
    type Future = Extracted<Self>;

    fn from_request(req: &HttpRequest, payload: &mut actix_web::dev::Payload) -> Self::Future {
        let actor = Actor::from_request(req, payload);
        // Only a GET can be repeated after signing in; a form post returns to the start page.
        let next = if req.method() == actix_web::http::Method::GET {
            req.uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned()
        } else {
            "/home".to_owned()
        };
        let state = req.app_data::<actix_web::web::Data<AppState>>().cloned();
        Box::pin(async move {
            match actor.await {
                Ok(actor) => {
                    adopt_zone(state.as_ref().map(|s| s.get_ref()), &actor).await?;
                    Ok(Self(actor))
                }
                Err(ApiError::Unauthenticated) => Err(WebError::SignIn { next }),
                Err(e) => Err(e.into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_come_back_after_sign_in() {
        assert_eq!(local_path("/homes/1?x=2"), Some("/homes/1?x=2"));
        for bad in [
            "//evil.example/",
            "https://evil.example/",
            "/\\evil",
            "homes",
            "/a\nb",
        ] {
            assert_eq!(local_path(bad), None, "{bad:?}");
        }
        assert_eq!(
            sign_in_path("/homes?a=b c"),
            "/sign-in?next=/homes%3Fa%3Db%20c"
        );
        assert_eq!(sign_in_path("//evil"), "/sign-in");
    }
}
