"""Pure logic of convex-gcp: settings, Cloud SQL rules and VM runtime rendering.

Nothing here declares Pulumi resources, so tests call it directly.
"""
