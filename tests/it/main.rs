//! Integration tests: the real `ssehub` binary, driven over raw TCP.

mod harness;

mod access;
mod browser;
mod cgroup;
mod disk;
mod hostile;
mod limits;
mod metrics;
mod netns;
mod pace;
mod proxy;
mod publish;
mod redis;
mod replay;
mod routes;
mod shutdown;
mod startup;
mod subscribe;
mod tokens;
mod topics;
