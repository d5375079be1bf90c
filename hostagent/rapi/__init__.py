"""Ganeti's Remote API v2, served by every agent (hostagent.rapi.server) in Ganeti's shapes (shapes)."""
