//! Configuration helpers: typed settings from the environment, URL validation.
