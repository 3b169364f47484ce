"""recstream's top layer: the command line, the demo and the dataset tools (the only package that imports
every other one; see docs/architecture.md for the layers)."""
