//! End-to-end tests against a real systemd (scripts/sandbox). They need root.

mod adopt;
mod app_config;
mod balancer;
mod beanstalk;
mod examples;
mod faults;
mod fleet;
mod hooks;
mod integrity;
mod load;
mod operator;
mod platform;
mod proxy;
mod readiness;
mod recovery;
mod rehearsal;
mod sample_app;
mod sandbox;
mod service;
mod socket;
mod support;
