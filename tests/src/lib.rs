//! Harness for end-to-end tests: starts real processes, waits on conditions.
