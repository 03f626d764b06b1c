//! Limits (issue 4).
