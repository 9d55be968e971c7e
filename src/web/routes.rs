//! Every route is added together with its access rule, so a route without
//! a rule cannot exist; [`rules`](super::rules) lists them all for the
//! route × role test and the README's table.

use axum::extract::Request;
use axum::handler::Handler;
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::routing::{self, MethodRouter};
use axum::Router;

use super::auth::{require, Access};
use super::AppState;

/// One route's rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
}

pub struct Routes {
    state: AppState,
    router: Router<AppState>,
    rules: Vec<Rule>,
}

impl Routes {
    pub fn new(state: AppState) -> Self {
        Routes {
            state,
            router: Router::new(),
            rules: Vec::new(),
        }
    }

    fn add(
        mut self,
        method: Method,
        path: &'static str,
        access: Access,
        mr: MethodRouter<AppState>,
    ) -> Self {
        let st = self.state.clone();
        let mr = mr.route_layer(middleware::from_fn(move |req: Request, next: Next| {
            require(access, st.clone(), req, next)
        }));
        self.router = self.router.route(path, mr);
        self.rules.push(Rule {
            method,
            path,
            access,
        });
        self
    }

    pub fn get<H, T>(self, path: &'static str, access: Access, h: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.add(Method::GET, path, access, routing::get(h))
    }

    pub fn post<H, T>(self, path: &'static str, access: Access, h: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.add(Method::POST, path, access, routing::post(h))
    }

    pub fn put<H, T>(self, path: &'static str, access: Access, h: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.add(Method::PUT, path, access, routing::put(h))
    }

    pub fn patch<H, T>(self, path: &'static str, access: Access, h: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.add(Method::PATCH, path, access, routing::patch(h))
    }

    pub fn delete<H, T>(self, path: &'static str, access: Access, h: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.add(Method::DELETE, path, access, routing::delete(h))
    }

    pub fn finish(self) -> (Router<AppState>, Vec<Rule>) {
        (self.router, self.rules)
    }
}
