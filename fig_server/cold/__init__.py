"""cold stage of Fig (see shared/DESIGN.md)."""
