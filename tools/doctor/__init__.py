"""convex-gcp doctor: diagnose a deployed stack (docs/doctor.md)."""
