"""Loom's engine. Nodes import it only through :mod:`engine.sdk`; see docs/architecture.md for the layers."""
