//! Replay (issue 4).
