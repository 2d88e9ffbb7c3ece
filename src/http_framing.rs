//! HTTP/1.1 framing rules (RFC 9112) that bestofn's server connection (`server::h1`) applies to
//! a request's headers.

use http::HeaderMap;
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};

/// What a message's `Transfer-Encoding` says: None when it has none, else whether its last
/// coding is chunked (section 6.3: only then does the coding frame the body).
pub fn ends_in_chunked(headers: &HeaderMap) -> Option<bool> {
    let last = headers.get_all(TRANSFER_ENCODING).iter().next_back()?;
    Some(
        last.to_str()
            .ok()
            .and_then(|codings| codings.rsplit(',').next())
            .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked")),
    )
}

/// Why a message's `Content-Length` cannot be read.
#[derive(Debug, Clone, PartialEq)]
pub enum LengthError {
    /// A value that is not a length (the header's whole value).
    Malformed(String),
    /// Values that disagree.
    Disagree,
}

/// A message's `Content-Length`: None when it has none. Repeated values, in several headers or
/// one list, must agree.
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, LengthError> {
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for item in value.to_str().unwrap_or("x").split(',') {
            let parsed = item.trim().parse::<u64>().map_err(|_| LengthError::Malformed(format!("{value:?}")))?;
            if length.is_some_and(|l| l != parsed) {
                return Err(LengthError::Disagree);
            }
            length = Some(parsed);
        }
    }
    Ok(length)
}

/// Whether a `Connection` header of `headers` lists `token`.
pub fn connection_lists(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, http::HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn framing_headers_are_read_as_rfc_9112_says() {
        assert_eq!(ends_in_chunked(&headers(&[])), None);
        assert_eq!(ends_in_chunked(&headers(&[("transfer-encoding", "gzip, Chunked")])), Some(true));
        assert_eq!(
            ends_in_chunked(&headers(&[("transfer-encoding", "chunked"), ("transfer-encoding", "gzip")])),
            Some(false)
        );
        assert_eq!(content_length(&headers(&[])), Ok(None));
        assert_eq!(content_length(&headers(&[("content-length", "5, 5"), ("content-length", "5")])), Ok(Some(5)));
        assert_eq!(content_length(&headers(&[("content-length", "5, 6")])), Err(LengthError::Disagree));
        assert_eq!(content_length(&headers(&[("content-length", "-1")])), Err(LengthError::Malformed("\"-1\"".into())));
        assert!(connection_lists(&headers(&[("connection", "keep-alive, Close")]), "close"));
        assert!(!connection_lists(&headers(&[("connection", "closed")]), "close"));
    }
}
