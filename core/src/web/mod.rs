//! What the driver's page and the resource manager's page share: the routes `/` (the page, or
//! the login form without the token) and `POST /login` (takes the cluster token, sets a cookie),
//! a guard on the JSON endpoints, and JSON answers.
//!
//! With a cluster token every endpoint wants it: `Authorization: Bearer TOKEN` (for scripts) or
//! the cookie the login form sets (for people), compared in constant time; without the token an
//! endpoint answers 401 and `/` the login form. Without a cluster token everything is open, as
//! `/metrics` is.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::auth::{constant_time_eq, ClusterToken};

/// The cookie that holds the cluster token once the login form took it.
const COOKIE: &str = "embedstream_token";

struct Site {
    token: ClusterToken,
    page: &'static str,
}

/// `page` at `/` with its JSON endpoints `api`, all behind the cluster token when there is one.
pub fn site(page: &'static str, api: Router, token: ClusterToken) -> Router {
    let site = Arc::new(Site { token, page });
    let api = api.route_layer(middleware::from_fn_with_state(site.clone(), require_token));
    Router::new().route("/", get(front)).route("/login", post(login)).with_state(site).merge(api)
}

/// A JSON answer.
pub fn json_response(value: serde_json::Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], value.to_string()).into_response()
}

/// Whether a request carries the cluster token (always, when there is none).
fn allowed(token: &ClusterToken, headers: &HeaderMap) -> bool {
    let Some(secret) = token.secret() else { return true };
    let bearer = (headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()))
        .and_then(|v| v.strip_prefix("Bearer "));
    let cookie = (headers.get_all(header::COOKIE).iter())
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(&format!("{COOKIE}=")).map(str::to_string));
    [bearer.map(str::to_string), cookie].into_iter().flatten().any(|t| constant_time_eq(t.as_bytes(), secret.as_bytes()))
}

fn refused() -> Response {
    (StatusCode::UNAUTHORIZED, [(header::CONTENT_TYPE, "application/json")], r#"{"error":"the cluster token is required"}"#)
        .into_response()
}

async fn require_token(State(site): State<Arc<Site>>, request: Request, next: Next) -> Response {
    if allowed(&site.token, request.headers()) {
        next.run(request).await
    } else {
        refused()
    }
}

async fn front(State(site): State<Arc<Site>>, headers: HeaderMap) -> Response {
    let html = if allowed(&site.token, &headers) { site.page } else { include_str!("login.html") };
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

async fn login(State(site): State<Arc<Site>>, body: String) -> Response {
    let token = body.split('&').find_map(|kv| kv.strip_prefix("token=")).map(percent_decode).unwrap_or_default();
    match site.token.secret() {
        Some(secret) if constant_time_eq(token.as_bytes(), secret.as_bytes()) => (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, "/".to_string()),
                (header::SET_COOKIE, format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/")),
            ],
        )
            .into_response(),
        Some(_) => refused(),
        None => (StatusCode::SEE_OTHER, [(header::LOCATION, "/".to_string())]).into_response(),
    }
}

/// A form field's value: `+` is a space, `%XX` a byte.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or(""), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_by_header_or_cookie_and_a_form_field_is_decoded() {
        let token = ClusterToken::new("s3cret+1");
        let headers = |name, value: &str| {
            let mut h = HeaderMap::new();
            h.insert(name, value.parse().unwrap());
            h
        };
        assert!(allowed(&token, &headers(header::AUTHORIZATION, "Bearer s3cret+1")));
        assert!(allowed(&token, &headers(header::COOKIE, "a=b; embedstream_token=s3cret+1")));
        assert!(!allowed(&token, &headers(header::AUTHORIZATION, "Bearer s3cret")));
        assert!(!allowed(&token, &HeaderMap::new()));
        assert!(allowed(&ClusterToken::default(), &HeaderMap::new()), "no token: open");
        assert_eq!(percent_decode("s3cret%2B1+x%zz"), "s3cret+1 x%zz");
    }
}
