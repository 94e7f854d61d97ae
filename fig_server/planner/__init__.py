"""planner stage of Fig (see shared/DESIGN.md)."""
