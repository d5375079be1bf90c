"""Test doubles shared by the unit and scenario tests, injected at the seams named in DESIGN.md."""
