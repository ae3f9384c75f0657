"""Keyword-only service functions: everything a route does, callable with just a session."""
