//! The firstkey override token (placeholder; built out by the lock-side issue).
#![cfg_attr(not(feature = "std"), no_std)]
extern crate alloc;
