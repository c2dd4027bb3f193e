//! WebSocket clients for tests: open through tether, send and check echoes
//! from the whoami backend (`"{id}: {text}"`).

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// Open `ws://addr/ws` with extra request headers.
pub async fn open(addr: SocketAddr, headers: &[(&str, &str)]) -> Result<Ws, String> {
    let mut req = format!("ws://{addr}/ws")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    for (k, v) in headers {
        let name: http::HeaderName = k.parse().map_err(|e| format!("{e}"))?;
        req.headers_mut()
            .insert(name, v.parse().map_err(|e| format!("{e}"))?);
    }
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (ws, resp) = tokio_tungstenite::client_async(req, tcp)
        .await
        .map_err(|e| e.to_string())?;
    if resp.status() != 101 {
        return Err(format!("status {}", resp.status()));
    }
    Ok(ws)
}

/// Send `text`; the answer's backend id (the part before `": "`).
pub async fn echo(ws: &mut Ws, text: &str) -> Result<String, String> {
    ws.send(Message::text(text))
        .await
        .map_err(|e| e.to_string())?;
    let next = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .map_err(|_| "no echo within 5 s".to_string())?;
    match next {
        Some(Ok(Message::Text(t))) => {
            let t = t.as_str();
            match t.strip_suffix(&format!(": {text}")) {
                Some(id) => Ok(id.to_owned()),
                None => Err(format!("unexpected echo {t:?}")),
            }
        }
        Some(Ok(Message::Close(f))) => Err(format!("closed: {f:?}")),
        Some(Ok(m)) => Err(format!("unexpected message {m:?}")),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("stream ended".into()),
    }
}

/// Wait up to `limit` for the server to close; the close code it sent.
pub async fn closed_with(ws: &mut Ws, limit: Duration) -> Option<CloseCode> {
    let end = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(end, ws.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => return f.map(|f| f.code),
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}
