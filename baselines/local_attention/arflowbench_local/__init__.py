"""Example contributed arflowbench plugin (see README.md)."""
