//! Shared test support: model builders (from core's `test-util`) and private network
//! namespaces.
#![allow(dead_code)]

pub mod netns;

#[allow(unused_imports)]
pub use switchyard_core::test_util::*;
