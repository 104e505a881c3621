"""The commands: each a plan of stages, or a reader of versions."""
