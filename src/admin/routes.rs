//! `/api/pools...` routes.

use http::{Method, Response, StatusCode};
use percent_encoding::percent_decode_str;
use serde_json::json;

use super::{error, json, AdminState};
use crate::pool::PoolRt;

pub(super) async fn api(
    state: &AdminState,
    method: &Method,
    path: &str,
    body: &[u8],
) -> Response<Vec<u8>> {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match (method, parts.as_slice()) {
        (&Method::GET, ["api", "pools"]) => json(StatusCode::OK, pools(state)),
        (m, ["api", "pools", pool, "sessions", key]) => {
            let Some(pool) = state.live.load().pool(pool) else {
                return error(StatusCode::NOT_FOUND, format!("no pool {pool}"));
            };
            let Ok(key) = percent_decode_str(key).decode_utf8() else {
                return error(StatusCode::BAD_REQUEST, "session key is not valid UTF-8");
            };
            session(&pool, m, &key).await
        }
        (&Method::POST, ["api", "pools", pool, "backends", id, action]) => {
            backend_action(state, pool, id, action, body).await
        }
        (_, ["api", "pools", ..]) | (_, ["api", "ping"]) | (_, ["metrics"]) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} not allowed on {path}"),
        ),
        _ => error(StatusCode::NOT_FOUND, format!("no route {path}")),
    }
}

fn pools(state: &AdminState) -> serde_json::Value {
    let pools: Vec<_> = state
        .live
        .load()
        .pools
        .iter()
        .map(|p| {
            let backends: Vec<_> = p
                .view()
                .backends
                .iter()
                .map(|b| {
                    json!({
                        "id": &*b.id,
                        "addr": b.addr().map(|a| a.to_string()),
                        "configured": b.configured().to_string(),
                        "weight": b.weight(),
                        "state": b.state(),
                        "health": b.health().as_str(),
                        "sessions": p.store.sessions_of(&b.id),
                        "live_connections": b.upstream_active.get(),
                        "checks": b.checks(),
                    })
                })
                .collect();
            json!({
                "name": &*p.name,
                "sessions": p.store.len(),
                "backends": backends,
                "moves": p.recent_moves(),
            })
        })
        .collect();
    // The VIP's status rides along, so the status page needs no second call
    // (and no 404 in its console) when none is configured.
    let vip = state.vip.as_ref().map(|v| v.status());
    json!({ "pools": pools, "vip": vip })
}

async fn session(pool: &PoolRt, method: &Method, key: &str) -> Response<Vec<u8>> {
    match *method {
        Method::GET => match pool.store.get(key).await {
            Ok(Some(s)) => json(
                StatusCode::OK,
                json!({ "pool": &*pool.name, "key": key, "session": s }),
            ),
            Ok(None) => error(
                StatusCode::NOT_FOUND,
                format!("no session {key} in pool {}", pool.name),
            ),
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        },
        Method::DELETE => match pool.store.delete(key).await {
            Ok(true) => Response::builder()
                .status(StatusCode::NO_CONTENT)
                .body(Vec::new())
                .unwrap_or_default(),
            Ok(false) => error(
                StatusCode::NOT_FOUND,
                format!("no session {key} in pool {}", pool.name),
            ),
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        },
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} not allowed on sessions"),
        ),
    }
}

/// `POST .../backends/{id}/drain` (body `{"deadline": "10m"}` optional) and `.../enable`.
async fn backend_action(
    state: &AdminState,
    pool: &str,
    id: &str,
    action: &str,
    body: &[u8],
) -> Response<Vec<u8>> {
    let Some(pool) = state.live.load().pool(pool) else {
        return error(StatusCode::NOT_FOUND, format!("no pool {pool}"));
    };
    let Some(b) = pool.backend(id).filter(|b| !b.removed()) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no backend {id} in pool {}", pool.name),
        );
    };
    match action {
        "enable" => {
            super::operator::enable(&*state.store, &pool, &b).await;
            json(
                StatusCode::OK,
                json!({ "pool": &*pool.name, "backend": id, "state": b.state() }),
            )
        }
        "drain" => {
            let deadline = match drain_deadline(body) {
                Ok(d) => d.unwrap_or(pool.cfg().drain_timeout),
                Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
            };
            super::operator::drain(&*state.store, &pool, &b, deadline).await;
            json(
                StatusCode::ACCEPTED,
                json!({
                    "pool": &*pool.name,
                    "backend": id,
                    "state": "draining",
                    "deadline": humantime::format_duration(deadline).to_string(),
                    "sessions": pool.store.sessions_of(id),
                }),
            )
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no action {action} (drain, enable)"),
        ),
    }
}

/// The optional `{"deadline": "10m"}` body of a drain call (at most ten years,
/// like every duration).
fn drain_deadline(body: &[u8]) -> Result<Option<std::time::Duration>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Drain {
        deadline: Option<String>,
    }
    let d: Drain = serde_json::from_slice(body).map_err(|e| format!("drain body: {e}"))?;
    match d.deadline {
        None => Ok(None),
        Some(s) => crate::config::parse_duration(&s)
            .map(Some)
            .map_err(|e| format!("drain deadline: {e}")),
    }
}
