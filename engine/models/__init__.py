"""Model files -> loaded, patched, placed modules (torch). Handles and families are torch-free."""
