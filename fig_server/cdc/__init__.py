"""cdc stage of Fig (see shared/DESIGN.md)."""
