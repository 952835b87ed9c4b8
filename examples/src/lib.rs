//! Shared code of the example binaries; they arrive with their issues.
