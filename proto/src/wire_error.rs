//! The one error type for a message that fails its checks at the edge.

/// A field of an incoming message is missing, malformed or out of bounds.
///
/// The message names the field, what was wrong and what the sender should do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct WireError {
    pub field: &'static str,
    pub problem: String,
}

impl WireError {
    pub fn new(field: &'static str, problem: impl Into<String>) -> Self {
        Self {
            field,
            problem: problem.into(),
        }
    }

    pub fn missing(field: &'static str) -> Self {
        Self::new(field, "missing; the sender must set it")
    }
}

impl From<WireError> for tonic::Status {
    fn from(err: WireError) -> Self {
        tonic::Status::invalid_argument(err.to_string())
    }
}
