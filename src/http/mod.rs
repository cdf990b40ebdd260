//! HTTP/1.1: requests parsed with httparse, JSON responses, and the relay's router.

mod request;
mod response;
mod router;

pub use request::{parse, percent_decode, ParseError, Request, MAX_BODY, MAX_HEAD, MAX_HEADERS};
pub use response::{reason, Response};
pub use router::{route, Route};
