//! Hostile input (issue 4).
