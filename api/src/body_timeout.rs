//! A deadline on reading a request body. actix bounds the wait for a
//! request's head (`client_request_timeout`) but not its body, so a client
//! sending one byte every few seconds would hold a connection forever.
//! This middleware wraps the body stream: once the deadline passes, the
//! next read fails with `TimedOut`, which `crate::error::json_error` turns
//! into a 408, and the connection is freed.

use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::middleware::Next;
use actix_web::HttpMessage;
use futures::StreamExt;
use tokio::time::Instant;

/// The body of a request must have arrived whole within `limit` of the
/// request's head.
pub async fn limit_body_time(
    limit: Duration,
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let deadline = Instant::now() + limit;
    let body = req.take_payload();
    let timed = futures::stream::unfold(Some(body), move |body| async move {
        let mut body = body?;
        match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(chunk)) => Some((chunk, Some(body))),
            Ok(None) => None,
            // Dropping the stream stops reading from the connection.
            Err(_) => Some((
                Err(PayloadError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "request body timed out",
                ))),
                None,
            )),
        }
    });
    req.set_payload(Payload::Stream {
        payload: Box::pin(timed),
    });
    next.call(req).await
}
