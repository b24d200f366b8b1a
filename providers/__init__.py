"""Backends behind `bridge.provider.Provider`, one module per service, found by entry point."""
