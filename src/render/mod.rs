//! Dry-run renders: text that the peers' own tools load as is.

pub mod iptables;
pub mod nft;
