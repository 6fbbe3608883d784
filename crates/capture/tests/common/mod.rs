//! Helpers shared by the capture integration tests.
#![allow(unused_imports)]

pub(crate) use meshpass_test_support::{cases, shared_dir};
