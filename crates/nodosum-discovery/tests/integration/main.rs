//! Integration tests of nodosum-discovery against real servers on loopback: dnsmasq for DNS,
//! a stand-in for Consul's HTTP API, the system resolver for static seeds.

mod consul;
mod consul_stand_in;
mod dns;
mod dnsmasq;
mod runner;
mod static_list;

/// Generous guard against hangs; never a timing assertion.
pub(crate) const GUARD: std::time::Duration = std::time::Duration::from_secs(30);
