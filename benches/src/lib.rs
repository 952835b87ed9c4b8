//! Benchmarks and the load harness arrive with the performance issue.
