"""session stage of Fig (see shared/DESIGN.md)."""
