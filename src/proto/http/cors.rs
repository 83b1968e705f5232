//! CORS for the Engine.IO endpoint, python-engineio style: an allowed `Origin` gets
//! `Access-Control-Allow-Origin` (and `-Credentials` when configured); a disallowed one gets
//! `400 Not an accepted origin.` and no CORS headers — WebSocket upgrades included, since
//! browsers apply no CORS to WebSockets and the server must stop cross-site hijacking itself.
//!
//! Must never: do I/O.

/// Which origins are allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedOrigins {
    Any,
    List(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsConfig {
    pub origins: AllowedOrigins,
    pub credentials: bool,
    /// Decides for origins the fixed list does not name (with [`AllowedOrigins::List`]).
    pub predicate: Option<OriginPredicate>,
}

/// A user's decision on an origin the fixed list does not name: true allows it. It runs on
/// the worker thread for each request with such an `Origin`: it must not block.
#[derive(Clone)]
pub struct OriginPredicate(pub std::sync::Arc<dyn Fn(&str) -> bool + Send + Sync>);

impl std::fmt::Debug for OriginPredicate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OriginPredicate(..)")
    }
}

impl PartialEq for OriginPredicate {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for OriginPredicate {}

impl Default for CorsConfig {
    fn default() -> Self {
        CorsConfig { origins: AllowedOrigins::Any, credentials: false, predicate: None }
    }
}

/// The body of the refusal.
pub const REJECTED_BODY: &str = "Not an accepted origin.";

/// The CORS verdict for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsDecision {
    /// Allowed; these header lines go into the response.
    Allowed(String),
    /// Refused: answer 400 [`REJECTED_BODY`].
    Rejected,
}

impl CorsConfig {
    /// Decides for a request with this `Origin` (none: same-origin or not a browser).
    pub fn decide(&self, origin: Option<&str>) -> CorsDecision {
        let Some(origin) = origin else {
            return CorsDecision::Allowed(String::new());
        };
        let mut h = String::new();
        match &self.origins {
            AllowedOrigins::Any if !self.credentials => h.push_str("Access-Control-Allow-Origin: *\r\n"),
            AllowedOrigins::Any => h.push_str(&format!("Access-Control-Allow-Origin: {origin}\r\nVary: Origin\r\n")),
            AllowedOrigins::List(list) if list.iter().any(|o| o == origin) || self.predicate.as_ref().is_some_and(|p| (p.0)(origin)) => {
                h.push_str(&format!("Access-Control-Allow-Origin: {origin}\r\nVary: Origin\r\n"))
            }
            AllowedOrigins::List(_) => return CorsDecision::Rejected,
        }
        if self.credentials {
            h.push_str("Access-Control-Allow-Credentials: true\r\n");
        }
        CorsDecision::Allowed(h)
    }

    /// Extra header lines of a preflight (OPTIONS) answer.
    pub fn preflight_headers(&self, requested_headers: Option<&str>) -> String {
        let mut h = String::from("Access-Control-Allow-Methods: GET, POST, OPTIONS\r\nAccess-Control-Max-Age: 86400\r\n");
        if let Some(r) = requested_headers {
            h.push_str(&format!("Access-Control-Allow-Headers: {r}\r\n"));
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        let any = CorsConfig::default();
        assert_eq!(any.decide(Some("http://x")), CorsDecision::Allowed("Access-Control-Allow-Origin: *\r\n".into()));
        assert_eq!(any.decide(None), CorsDecision::Allowed(String::new()));
        let list = CorsConfig { origins: AllowedOrigins::List(vec!["http://a".into()]), credentials: true, predicate: None };
        assert_eq!(list.decide(Some("http://b")), CorsDecision::Rejected);
        assert_eq!(
            list.decide(Some("http://a")),
            CorsDecision::Allowed("Access-Control-Allow-Origin: http://a\r\nVary: Origin\r\nAccess-Control-Allow-Credentials: true\r\n".into())
        );
        // Beside the list, a predicate.
        let pred = CorsConfig { predicate: Some(OriginPredicate(std::sync::Arc::new(|o: &str| o.ends_with(".example.com")))), ..list };
        assert_eq!(pred.decide(Some("http://b")), CorsDecision::Rejected);
        assert!(matches!(pred.decide(Some("https://app.example.com")), CorsDecision::Allowed(h) if h.contains("Allow-Origin: https://app.example.com")));
        assert!(matches!(pred.decide(Some("http://a")), CorsDecision::Allowed(_)));
    }
}
