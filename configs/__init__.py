"""ml-collections training configs; each file's docstring holds its launch command."""
