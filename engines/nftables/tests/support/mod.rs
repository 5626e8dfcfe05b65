//! Shared test support: model builders (from the model crate's `test-util`) and private network
//! namespaces.
#![allow(dead_code)]

pub mod netns;

#[allow(unused_imports)]
pub use switchyard_model::test_util::*;
