//! The control plane's client side: what the CLI verbs, `meshlimit dataplane` and the kernel
//! agent link. It holds the REST API's JSON bodies ([`wire`], shared with the server so the two
//! cannot drift), the URL of every resource ([`paths`]), a small HTTP [`client`], and the
//! [`follow`]ers: a data plane asks for its limits and gets a `tokio::sync::watch` receiver of
//! [`Versioned`] limits that stays current — reconnecting with backoff, keeping the last limits
//! while the control plane is away. No store, no server: a data plane never compiles them.
//!
//! Start at [`follow::follow_dataplane`] and [`follow::follow_kernel`], then [`client::Client`].

pub mod client;
pub mod follow;
pub mod paths;
pub mod wire;

pub use client::{Client, ClientError};
pub use follow::{FollowConfig, Followed, Link};
pub use meshlimit_policy::Versioned;

/// The API address when none is given: loopback only.
pub const DEFAULT_API_ADDR: &str = "127.0.0.1:5681";
