"""Replaying recorded routing against expert-cache policies (DESIGN.md "Replay semantics")."""
