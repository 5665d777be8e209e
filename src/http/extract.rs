//! The signed-in user behind a request, as the handlers extract it: the session cookie looked up
//! with [`crate::auth::session::authenticate`] (the core), here at the HTTP edge.

use std::future::Future;
use std::pin::Pin;

use actix_web::{FromRequest, HttpRequest, web};

use super::AppState;
use super::error::ApiError;
use crate::auth::session::{Actor, COOKIE, authenticate};
use crate::store::StoreError;

impl FromRequest for Actor {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let secret = req.cookie(COOKIE).map(|c| c.value().to_owned());
        let state = req.app_data::<web::Data<AppState>>().cloned();
        Box::pin(async move {
            let (Some(secret), Some(state)) = (secret, state) else {
                return Err(ApiError::Unauthenticated);
            };
            let client = state.pool.get().await.map_err(StoreError::from)?;
            authenticate(&client, &secret, state.clock.now())
                .await?
                .ok_or(ApiError::Unauthenticated)
        })
    }
}
